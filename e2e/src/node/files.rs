//! Small file helpers with errors that name the path.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use crate::error::{IoContext, Result};

pub(super) fn write(path: &Path, contents: &str) -> Result<()> {
    let mut file = File::create(path).io_context("writing a node config", path)?;
    file.write_all(contents.as_bytes())
        .io_context("writing a node config", path)
}
