//! What the agent tells Prometheus: its metrics ([`metrics`]), above all the device-memory
//! restore timings the plugin reports. `ferry-service` serves them with `/healthz` and
//! `/readyz`, the same way as the operator's.

pub mod metrics;
