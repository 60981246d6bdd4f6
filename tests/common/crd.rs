#![allow(clippy::unwrap_used)]
//! Validation of custom resources against the Prometheus-Operator CRDs in `tests/fixtures/crds`:
//! the `openAPIV3Schema` of the object's version, plus a check that every field is declared (the
//! API server silently prunes undeclared ones, so a patch adding one would be lost).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::Value;

/// The CRD folder.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds")
}

/// The CRD of `plural` (e.g. `prometheuses`), parsed once per test binary.
pub fn load(plural: &str) -> Arc<Value> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Value>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(plural.to_string())
        .or_insert_with(|| {
            let path = dir().join(format!("monitoring.coreos.com_{plural}.yaml"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Arc::new(
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
        })
        .clone()
}

/// The CRD plural of a Prometheus-Operator kind.
pub fn plural_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Prometheus" => "prometheuses",
        "PrometheusAgent" => "prometheusagents",
        "Alertmanager" => "alertmanagers",
        "ThanosRuler" => "thanosrulers",
        _ => return None,
    })
}

/// Validates a Prometheus-Operator custom resource against its CRD.
pub fn check(v: &Value) -> Result<(), String> {
    let kind = v["kind"].as_str().unwrap_or_default();
    let plural = plural_of(kind).ok_or(format!("no CRD for kind {kind:?}"))?;
    let crd = load(plural);
    let version = v["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit_once('/'))
        .map(|(_, v)| v)
        .unwrap_or_default();
    let schema = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ver| ver["name"] == version)
        .map(|ver| &ver["schema"]["openAPIV3Schema"])
        .ok_or(format!("version {version} not in the {plural} CRD"))?;
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(format!("invalid against the {plural} CRD: {errors:?}"));
    }
    let mut pruned = Vec::new();
    undeclared(v, schema, "", &mut pruned);
    if !pruned.is_empty() {
        return Err(format!(
            "fields the {plural} CRD does not declare: {pruned:?}"
        ));
    }
    Ok(())
}

fn undeclared(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in map {
                    match props.get(k) {
                        Some(s) => undeclared(v, s, &format!("{path}/{k}"), out),
                        None => out.push(format!("{path}/{k}")),
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (k, v) in map {
                    undeclared(
                        v,
                        &schema["additionalProperties"],
                        &format!("{path}/{k}"),
                        out,
                    );
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                undeclared(v, &schema["items"], &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}
