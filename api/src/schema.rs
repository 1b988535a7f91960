//! Schema adjustments that schemars' attributes cannot express.

use schemars::Schema;
use serde_json::Value;

/// Makes the `Option` members of a struct "absent or set", never `null`.
///
/// schemars types an `Option<T>` member as `T | null`, and kube turns that into
/// `nullable: true`. A nullable member that a client sends as `null` is stored as `null`: CEL
/// rules on it then see a value that is present (`has()` is true) but not a string or an
/// object, and fail with an evaluation error instead of their message. Without `nullable`, the
/// API server prunes an explicit `null` before defaulting and validation, so `null` means the
/// same as leaving the member out, which is what the Rust `None` means too.
///
/// Used as `#[schemars(transform = crate::schema::absent_not_null)]` on every CRD struct; it
/// runs before kube's own transforms, so there is no `null` left for them to make nullable.
pub fn absent_not_null(schema: &mut Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for property in properties.values_mut() {
        strip_null(property);
    }
}

fn strip_null(property: &mut Value) {
    let Some(obj) = property.as_object_mut() else {
        return;
    };
    // `Option<String>` and friends: `"type": ["string", "null"]`.
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            obj.insert("type".into(), only);
        }
    }
    // `Option<Struct>` and `Option<Enum>`: `"anyOf": [{..}, {"type": "null"}]`, or an enum
    // whose value list carries a `null`.
    if let Some(Value::Array(any_of)) = obj.get("anyOf") {
        let non_null: Vec<Value> = any_of
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .cloned()
            .collect();
        if non_null.len() != any_of.len() {
            obj.remove("anyOf");
            if let [Value::Object(only)] = non_null.as_slice() {
                for (k, v) in only {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
            } else {
                obj.insert("anyOf".into(), Value::Array(non_null));
            }
        }
    }
    if let Some(Value::Array(values)) = obj.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    if obj.get("default").is_some_and(Value::is_null) {
        obj.remove("default");
    }
}
