//! Connector spec files: JSON or YAML, the REST API's registration body (SPEC §4). A file is
//! checked field by field before anything is sent; it never holds a secret (`secret_ref`
//! names one).

use std::io::Read;
use std::path::Path;

use kyma_catalog::ConnectorSpec;
use kyma_query_node::admin_grpc::{proto, spec_proto};

/// Reads the spec at `path` (`-`: standard input). JSON for `.json`, YAML for `.yaml` and
/// `.yml`; otherwise JSON when the text starts with `{`, else YAML.
pub fn read(path: &str) -> Result<Box<proto::ConnectorSpec>, String> {
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the spec from standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the spec file: {e}"))?
    };
    let spec = parse(&text, is_json(Path::new(path), &text))?;
    Ok(Box::new(spec_proto(&spec)))
}

fn is_json(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => text.trim_start().starts_with('{'),
    }
}

fn parse(text: &str, json: bool) -> Result<ConnectorSpec, String> {
    if json {
        serde_json::from_str(text).map_err(|e| format!("not a connector spec (JSON): {e}"))
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a connector spec (YAML): {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_specs_read_alike_and_an_unknown_field_is_named() {
        let yaml = "name: pg\ntype: postgres\nmode: sync\nconnection:\n  url: postgres://app@db/app\n  secret_ref: pg-password\n";
        let json = r#"{"name": "pg", "type": "postgres", "mode": "sync",
                       "connection": {"url": "postgres://app@db/app", "secret_ref": "pg-password"}}"#;
        let from_yaml = parse(yaml, false).expect("yaml");
        assert_eq!(from_yaml, parse(json, true).expect("json"));
        assert_eq!(
            from_yaml.connection.secret_ref.as_deref(),
            Some("pg-password")
        );

        let error = parse(&yaml.replace("secret_ref", "password"), false).expect_err("refused");
        assert!(error.contains("unknown field `password`"), "{error}");
        let error = parse(&json.replace("sync", "mirror"), true).expect_err("refused");
        assert!(error.contains("unknown variant `mirror`"), "{error}");
    }
}
