//! The admission engine: AdmissionReview bytes in, a [`Decision`] and AdmissionReview bytes out.
//!
//! Pure: no tokio, no HTTP, no Kubernetes client, no clock. The webhook server, the offline
//! `mutate` command, the benchmarks and the fuzzers all call the same functions, so they cannot
//! disagree. Decoding reads only the fields a decision needs ([`view`]); patches are built by
//! hand as `add`/`remove` operations ([`patch`]), never by diffing a re-serialized object.

pub(crate) mod json;
pub mod patch;
pub mod prometheus;
pub mod statefulset;
pub mod view;

use std::{borrow::Cow, fmt};

use base64::Engine as _;
use serde::Serialize;

use crate::policy::{
    self, AnnotationError, Mode, Overrides, Policy, Source, StorageSpec, parse_bool_annotation,
};
pub use patch::Patch;
pub use prometheus::CrKind;
pub use view::{MetaView, Operation, Request, ReviewView};

/// Longest warning line we return (kubectl prints each one).
pub const MAX_WARNING_LEN: usize = 120;

/// The annotations kube-persist reads (after the `kube-persist.io/` prefix).
pub const KNOWN_ANNOTATIONS: [&str; 8] = [
    "skip",
    "adopt",
    "size",
    "storage-class",
    "access-modes",
    "volumes",
    "mount-path",
    "containers",
];

/// What happened to one admission request, as recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A patch was returned.
    Mutated,
    /// Nothing to do (not a target, or storage already there).
    Unchanged,
    /// Policy or the object asked us to leave it.
    Skipped,
    /// Audit mode: this patch would have been returned.
    WouldMutate,
    /// An annotation value is invalid; allowed unchanged (or denied when strict).
    Invalid,
    /// The object could not be read; allowed unchanged.
    Error,
}

impl Outcome {
    /// The audit log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::WouldMutate => "would-mutate",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

/// The storage a decision added (or would add).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedStorage {
    /// StorageClass name.
    pub storage_class_name: String,
    /// Size as written.
    pub size: String,
    /// Where class and size came from.
    pub source: Source,
}

/// A policy decision about one object: a value, never an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// Why, in a few words.
    pub reason: String,
    /// The JSON Patch (empty unless [`Outcome::Mutated`]; for [`Outcome::WouldMutate`], what
    /// would have been applied).
    pub patch: Patch,
    /// Lines for the user (kubectl prints them).
    pub warnings: Vec<String>,
    /// The storage added or proposed.
    pub storage: Option<AddedStorage>,
    /// Set when strict policy denies the request.
    pub denied: Option<String>,
}

impl Decision {
    pub(crate) fn new(outcome: Outcome, reason: impl Into<String>) -> Self {
        Decision {
            outcome,
            reason: reason.into(),
            patch: Patch::new(),
            warnings: Vec::new(),
            storage: None,
            denied: None,
        }
    }

    /// Allowed unchanged: nothing to do.
    pub fn unchanged(reason: impl Into<String>) -> Self {
        Decision::new(Outcome::Unchanged, reason)
    }

    /// Allowed unchanged: policy or the object opted out.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Decision::new(Outcome::Skipped, reason)
    }

    /// Allowed unchanged: the object could not be read.
    pub fn error(reason: impl Into<String>) -> Self {
        Decision::new(Outcome::Error, reason)
    }

    /// Adds a warning line (shortened to [`MAX_WARNING_LEN`]).
    pub fn warn(mut self, text: impl Into<String>) -> Self {
        self.warnings.push(shorten(text.into()));
        self
    }

    /// The patch that the response carries (empty unless mutated).
    pub fn response_patch(&self) -> &Patch {
        match self.outcome {
            Outcome::Mutated => &self.patch,
            _ => &patch::EMPTY,
        }
    }

    /// The patch that the audit record carries: returned, or proposed in audit mode.
    pub fn audit_patch(&self) -> &Patch {
        match self.outcome {
            Outcome::Mutated | Outcome::WouldMutate => &self.patch,
            _ => &patch::EMPTY,
        }
    }
}

/// Who a decision is about, for warnings and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Ident<'r> {
    /// Kind.
    pub kind: &'r str,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: &'r str,
    /// Name, or the `generateName` prefix.
    pub name: &'r str,
    /// Whether `name` is a `generateName` prefix.
    pub generated: bool,
}

impl<'r> Ident<'r> {
    /// Identifies the object of `req`.
    pub fn of(req: &'r Request<'_>) -> Self {
        let meta = req.object.as_ref().and_then(|o| o.metadata.as_ref());
        let namespace = non_empty(req.namespace.as_deref())
            .or_else(|| meta.and_then(|m| non_empty(m.namespace.as_deref())))
            .unwrap_or("");
        let name = non_empty(req.name.as_deref())
            .or_else(|| meta.and_then(|m| non_empty(m.name.as_deref())));
        let (name, generated) = match name {
            Some(n) => (n, false),
            None => (
                meta.and_then(|m| non_empty(m.generate_name.as_deref()))
                    .unwrap_or(""),
                true,
            ),
        };
        Ident {
            kind: &req.kind.kind,
            namespace,
            name,
            generated,
        }
    }
}

impl Ident<'_> {
    /// The pieces of `Kind namespace/name` (`Kind name` when cluster-scoped), with `*` after a
    /// `generateName` prefix.
    fn parts(&self) -> [&str; 6] {
        let slash = if self.namespace.is_empty() { "" } else { "/" };
        let star = if self.generated { "*" } else { "" };
        [self.kind, " ", self.namespace, slash, self.name, star]
    }

    /// Appends the [`Display`](fmt::Display) form to `out`, without the formatting machinery
    /// (this runs for every mutated object).
    pub(crate) fn push_to(&self, out: &mut String) {
        for part in self.parts() {
            out.push_str(part);
        }
    }
}

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts()
            .into_iter()
            .try_for_each(|part| f.write_str(part))
    }
}

/// `parts` joined into one string of exactly their length: `format!` for the paths every
/// mutated object takes.
pub(crate) fn concat(parts: &[&str]) -> String {
    concat_with_room(parts, 0)
}

/// [`concat`], with room for `extra` more bytes (what the caller appends next).
pub(crate) fn concat_with_room(parts: &[&str], extra: usize) -> String {
    let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + extra);
    for part in parts {
        text.push_str(part);
    }
    text
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The kinds kube-persist acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Prometheus-Operator custom resource.
    Cr(CrKind),
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl Target {
    /// The target for a group/version/kind, if it is one.
    pub fn of(group: &str, version: &str, kind: &str) -> Option<Target> {
        match (group, version, kind) {
            ("apps", "v1", "StatefulSet") => Some(Target::StatefulSet),
            ("monitoring.coreos.com", v, k) => CrKind::of(v, k).map(Target::Cr),
            _ => None,
        }
    }

    /// A bounded label for metrics (`other` for everything else).
    pub fn metric_label(target: Option<Target>) -> &'static str {
        match target {
            Some(Target::StatefulSet) => "StatefulSet",
            Some(Target::Cr(k)) => k.as_str(),
            None => "other",
        }
    }
}

/// Decides what to do with `req` under `policy`.
pub fn evaluate(req: &Request<'_>, policy: &Policy) -> Decision {
    let Some(target) = Target::of(&req.kind.group, &req.kind.version, &req.kind.kind) else {
        return Decision::unchanged("not a target kind");
    };
    if let Some(sub) = non_empty(req.sub_resource.as_deref()) {
        return Decision::unchanged(format!("subresource {sub} is not mutated"));
    }
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Decision::unchanged(format!(
            "operation {} is not mutated",
            req.operation.as_str()
        ));
    }
    if let Some(problem) = &req.object_error {
        return Decision::error(format!("cannot read the object: {problem}")).warn(format!(
            "kube-persist: could not read {}: left unchanged",
            Ident::of(req)
        ));
    }
    let Some(object) = req.object.as_ref() else {
        return Decision::error("the request has no object");
    };
    match target {
        Target::Cr(kind) => prometheus::decide(req, object, kind, policy),
        Target::StatefulSet => statefulset::decide(req, object, policy),
    }
}

/// What every kind checks before looking at storage: namespace exclusion, the `skip` opt-out,
/// and whether the override annotations are valid.
pub(crate) struct Gate<'a> {
    /// Storage for this object.
    pub storage: StorageSpec<'a>,
    /// `kube-persist.io/adopt: "true"`.
    pub adopt: bool,
    /// Warnings to pass on (unknown annotations).
    pub warnings: Vec<String>,
}

/// Runs the common checks; `Err` is the final decision.
#[allow(
    clippy::result_large_err,
    reason = "the Err side is the request's final decision, built once per request"
)]
pub(crate) fn gate<'a>(
    ident: &Ident<'_>,
    meta: Option<&'a MetaView<'a>>,
    policy: &'a Policy,
    extra_errors: Vec<AnnotationError>,
) -> Result<Gate<'a>, Decision> {
    if !ident.namespace.is_empty() && policy.is_excluded_namespace(ident.namespace) {
        return Err(Decision::skipped(format!(
            "namespace {} is excluded by policy",
            ident.namespace
        )));
    }
    let annotations = meta.and_then(|m| m.annotations.as_ref());
    let get = |name: &str| annotations.and_then(|a| a.get(name));
    let mut errors = Vec::new();
    let mut flag = |name: &str| match get(name).map(|v| parse_bool_annotation(name, v)) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            errors.push(e);
            false
        }
        None => false,
    };
    if flag("skip") {
        return Err(Decision::skipped(format!(
            "annotation {}skip is \"true\"",
            policy::ANNOTATION_PREFIX
        )));
    }
    let adopt = flag("adopt");
    let overrides = Overrides {
        size: get("size"),
        storage_class: get("storage-class"),
        access_modes: get("access-modes"),
    };
    errors.extend(extra_errors);
    let storage = match policy.storage_for(ident.namespace, &overrides) {
        Ok(storage) if errors.is_empty() => storage,
        Ok(_) => return Err(invalid(ident, &errors, policy)),
        Err(mut more) => {
            errors.append(&mut more);
            return Err(invalid(ident, &errors, policy));
        }
    };
    let warnings = annotations
        .into_iter()
        .flat_map(|a| a.0.iter())
        .filter(|(k, _)| !KNOWN_ANNOTATIONS.contains(&k.as_ref()))
        .map(|(k, _)| {
            shorten(format!(
                "kube-persist: unknown annotation {}{k} ignored ({ident})",
                policy::ANNOTATION_PREFIX
            ))
        })
        .collect();
    Ok(Gate {
        storage,
        adopt,
        warnings,
    })
}

/// The decision for invalid annotations: allowed unchanged with a warning per problem, or
/// denied under a strict policy.
pub(crate) fn invalid(ident: &Ident<'_>, errors: &[AnnotationError], policy: &Policy) -> Decision {
    let reason = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut d = Decision::new(Outcome::Invalid, format!("invalid annotation: {reason}"));
    for e in errors {
        d = d.warn(format!("kube-persist: {ident} left unchanged: {e}"));
    }
    // Audit mode never changes admission, not even under a strict policy.
    if policy.strict && policy.mode_for(ident.namespace) == Mode::Enforce {
        d.denied = Some(format!(
            "kube-persist (strict policy): invalid annotation on {ident}: {reason}"
        ));
    }
    d
}

/// The decision to add storage: applied in enforce mode, only reported in audit mode.
/// `what` describes the addition for the warning (e.g. `100Gi volume`).
pub(crate) fn propose(
    ident: &Ident<'_>,
    policy: &Policy,
    storage: &StorageSpec<'_>,
    patch: Patch,
    what: &str,
    mut warnings: Vec<String>,
) -> Decision {
    let added = AddedStorage {
        storage_class_name: storage.storage_class_name.to_string(),
        size: storage.size.as_str().to_string(),
        source: storage.source,
    };
    let (outcome, reason, warning) = match policy.mode_for(ident.namespace) {
        Mode::Enforce => (Outcome::Mutated, "added ", "kube-persist: added "),
        Mode::Audit => (
            Outcome::WouldMutate,
            "audit mode: would add ",
            "kube-persist: audit mode, would add ",
        ),
    };
    // `kube-persist: added 100Gi volume on StorageClass nfs-client (Prometheus monitoring/k8s)`
    let ident_len: usize = ident.parts().iter().map(|p| p.len()).sum();
    let mut line = concat_with_room(
        &[
            warning,
            what,
            " on StorageClass ",
            &added.storage_class_name,
            " (",
        ],
        ident_len + 1,
    );
    ident.push_to(&mut line);
    line.push(')');
    // Room for the details a StatefulSet decision appends (emptyDirs left, raised sizes).
    let why = concat_with_room(&[reason, what], 64);
    let mut d = Decision::new(outcome, why).warn(line);
    d.patch = patch;
    d.storage = Some(added);
    d.warnings.append(&mut warnings);
    d
}

/// Cuts `text` to [`MAX_WARNING_LEN`] characters (on a character boundary).
pub fn shorten(mut text: String) -> String {
    // A string has at most as many characters as bytes.
    if text.len() > MAX_WARNING_LEN && text.chars().count() > MAX_WARNING_LEN {
        let cut = text
            .char_indices()
            .nth(MAX_WARNING_LEN - 3)
            .map_or(text.len(), |(i, _)| i);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Why a body is not a usable AdmissionReview (the HTTP layer answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but not an AdmissionReview with a request.
    #[error("not an AdmissionReview: {0}")]
    NotAReview(String),
}

/// A decoded and decided review.
#[derive(Debug)]
pub struct Reviewed<'a> {
    /// `apiVersion` to answer with.
    pub api_version: Cow<'a, str>,
    /// The request.
    pub request: Request<'a>,
    /// The decision.
    pub decision: Decision,
    /// The AdmissionReview response, serialized.
    pub response: Vec<u8>,
}

/// Decodes `body`, decides under `policy` and encodes the response.
pub fn review<'a>(body: &'a [u8], policy: &Policy) -> Result<Reviewed<'a>, ReviewError> {
    let (api_version, request) = decode(body)?;
    let decision = evaluate(&request, policy);
    let response = encode(&api_version, &request.uid, &decision);
    Ok(Reviewed {
        api_version,
        request,
        decision,
        response,
    })
}

/// Decodes an AdmissionReview body into its `apiVersion` and request.
///
/// An object this engine cannot read (a field of the wrong type) still yields the request, with
/// `object` unset and the problem recorded, so the response keeps the request's uid.
///
/// JSON text is UTF-8 (RFC 8259): the body is checked once, as a whole, and then parsed as a
/// `str`, so serde_json borrows every string without validating each one again.
pub fn decode(body: &[u8]) -> Result<(Cow<'_, str>, Request<'_>), ReviewError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ReviewError::Malformed(format!("the body is not UTF-8: {e}")))?;
    match serde_json::from_str::<ReviewView<'_>>(text) {
        Ok(review) => check_envelope(review),
        Err(e) if e.is_data() => {
            let object_error = e.to_string();
            let fallback: view::FallbackReview<'_> = serde_json::from_str(text)
                .map_err(|_| ReviewError::NotAReview(object_error.clone()))?;
            let (api_version, mut request) = check_envelope(fallback.into_review())?;
            request.object_error = Some(object_error);
            Ok((api_version, request))
        }
        Err(e) => Err(ReviewError::Malformed(e.to_string())),
    }
}

fn check_envelope(review: ReviewView<'_>) -> Result<(Cow<'_, str>, Request<'_>), ReviewError> {
    let ReviewView {
        api_version,
        kind,
        request,
    } = review;
    match kind.as_deref() {
        Some("AdmissionReview") => {}
        Some(other) => {
            return Err(ReviewError::NotAReview(format!(
                "kind is {other:?}, expected \"AdmissionReview\""
            )));
        }
        None => return Err(ReviewError::NotAReview("kind is missing".to_string())),
    }
    let api_version = match api_version {
        Some(v) if v == "admission.k8s.io/v1" || v == "admission.k8s.io/v1beta1" => v,
        Some(v) => {
            return Err(ReviewError::NotAReview(format!(
                "apiVersion {v:?} is not admission.k8s.io/v1"
            )));
        }
        None => return Err(ReviewError::NotAReview("apiVersion is missing".to_string())),
    };
    let request =
        request.ok_or_else(|| ReviewError::NotAReview("the review has no request".to_string()))?;
    if request.uid.is_empty() {
        return Err(ReviewError::NotAReview("request.uid is empty".to_string()));
    }
    Ok((api_version, request))
}

/// Serializes the AdmissionReview response for `decision`.
///
/// Written by hand with [`json`] (the same bytes serde_json would write for the same fields;
/// the tests compare them): the patch, already JSON, goes into the output as base64, without an
/// intermediate string or an escape scan.
pub fn encode(api_version: &str, uid: &str, decision: &Decision) -> Vec<u8> {
    let patch = decision.response_patch();
    let mut out = Vec::with_capacity(
        256 + uid.len() + patch.as_json().len() * 4 / 3 + decision.warnings.len() * MAX_WARNING_LEN,
    );
    out.extend_from_slice(br#"{"apiVersion":"#);
    json::str(&mut out, api_version);
    out.extend_from_slice(br#","kind":"AdmissionReview","response":{"uid":"#);
    json::str(&mut out, uid);
    out.extend_from_slice(br#","allowed":"#);
    json::bool(&mut out, decision.denied.is_none());
    if let Some(message) = &decision.denied {
        out.extend_from_slice(br#","status":{"code":403,"reason":"Forbidden","message":"#);
        json::str(&mut out, message);
        out.push(b'}');
    }
    if !patch.is_empty() {
        out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        push_base64(&mut out, patch.as_json());
        out.push(b'"');
    }
    if !decision.warnings.is_empty() {
        out.extend_from_slice(br#","warnings":["#);
        for (i, warning) in decision.warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::str(&mut out, warning);
        }
        out.push(b']');
    }
    out.extend_from_slice(br#","auditAnnotations":{"decision":""#);
    out.extend_from_slice(decision.outcome.as_str().as_bytes());
    out.push(b'"');
    if let Some(s) = &decision.storage {
        out.extend_from_slice(br#","storage":"#);
        json::str_pair(&mut out, &s.storage_class_name, '/', &s.size);
    }
    out.extend_from_slice(b"}}}");
    out
}

/// Appends `bytes` in standard base64 (whose alphabet never needs JSON escaping).
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    match engine.encode_slice(bytes, &mut out[start..]) {
        Ok(written) => out.truncate(start + written),
        Err(_) => {
            // Cannot happen (the buffer has the encoded length); stay correct anyway.
            out.truncate(start);
            out.extend_from_slice(engine.encode(bytes).as_bytes());
        }
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
