//! The admission engine: AdmissionReview bytes in, a [`Decision`] and AdmissionReview bytes out.
//!
//! Pure: no tokio, no HTTP, no Kubernetes client, no clock. The webhook server, the offline
//! `mutate` command, the benchmarks and the fuzzers all call the same functions, so they cannot
//! disagree. Decoding reads only the fields a decision needs ([`view`]); a [`Decision`] is a
//! [`Verdict`] (only a mutation carries a patch) plus warnings; patches are `add`/`remove`
//! operations built from typed values ([`patch`]), never by diffing a re-serialized object.

mod body;
pub mod patch;
pub mod prometheus;
pub mod statefulset;
pub mod view;

use std::{
    borrow::Cow,
    fmt::{self, Write as _},
};

use base64::Engine as _;
use serde::Serialize;

use crate::policy::{
    self, AnnotationError, Mode, Overrides, Policy, Source, StorageSpec, parse_bool_annotation,
};
pub use body::{DEFAULT_UID, ReviewBody};
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
    pub storage_class_name: String,
    /// Size as written (for a StatefulSet, its largest claim).
    pub size: String,
    /// Where class and size came from.
    pub source: Source,
}

/// A policy decision about one object: a value, never an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What happens to the object, and why.
    pub verdict: Verdict,
    /// Lines for the user (kubectl prints them), each at most [`MAX_WARNING_LEN`] characters.
    pub warnings: Vec<String>,
}

/// What happens to one object. Only a mutation carries a patch, only an invalid object can be
/// denied.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed unchanged: not a target, or storage already there.
    Unchanged { reason: String },
    /// Allowed unchanged: policy or the object opted out.
    Skipped {
        /// Which opt-out applied.
        reason: String,
    },
    /// Allowed with the change applied (enforce mode).
    Mutate(Change),
    /// Allowed unchanged; the change is only reported (audit mode).
    WouldMutate(Change),
    /// An annotation value is invalid: allowed unchanged, or denied under a strict policy.
    Invalid {
        /// Every problem found.
        reason: String,
        /// The message the API server shows when a strict policy denies the request.
        denied: Option<String>,
    },
    /// The object could not be read: allowed unchanged.
    Error {
        /// What could not be read.
        reason: String,
    },
}

/// A patch to the object and what it adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What the patch does, in a few words.
    pub reason: String,
    /// The operations (never empty).
    pub patch: Patch,
    /// The storage the patch adds; `None` when it only puts back the storage an UPDATE
    /// removed.
    pub storage: Option<AddedStorage>,
}

impl Decision {
    pub(crate) fn of(verdict: Verdict) -> Self {
        Decision {
            verdict,
            warnings: Vec::new(),
        }
    }

    /// Allowed unchanged: nothing to do.
    pub fn unchanged(reason: impl Into<String>) -> Self {
        Decision::of(Verdict::Unchanged {
            reason: reason.into(),
        })
    }

    /// Allowed unchanged: policy or the object opted out.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Decision::of(Verdict::Skipped {
            reason: reason.into(),
        })
    }

    /// Allowed unchanged: the object could not be read.
    pub fn error(reason: impl Into<String>) -> Self {
        Decision::of(Verdict::Error {
            reason: reason.into(),
        })
    }

    /// Adds a warning line (shortened to [`MAX_WARNING_LEN`]).
    pub fn warn(mut self, text: impl Into<String>) -> Self {
        self.warnings.push(shorten(text.into()));
        self
    }

    /// The label of the verdict (metrics, audit log, response annotation).
    pub fn outcome(&self) -> Outcome {
        match self.verdict {
            Verdict::Unchanged { .. } => Outcome::Unchanged,
            Verdict::Skipped { .. } => Outcome::Skipped,
            Verdict::Mutate(_) => Outcome::Mutated,
            Verdict::WouldMutate(_) => Outcome::WouldMutate,
            Verdict::Invalid { .. } => Outcome::Invalid,
            Verdict::Error { .. } => Outcome::Error,
        }
    }

    pub fn reason(&self) -> &str {
        match &self.verdict {
            Verdict::Unchanged { reason }
            | Verdict::Skipped { reason }
            | Verdict::Invalid { reason, .. }
            | Verdict::Error { reason } => reason,
            Verdict::Mutate(change) | Verdict::WouldMutate(change) => &change.reason,
        }
    }

    /// The change applied, or in audit mode proposed.
    pub fn change(&self) -> Option<&Change> {
        match &self.verdict {
            Verdict::Mutate(change) | Verdict::WouldMutate(change) => Some(change),
            _ => None,
        }
    }

    /// The patch applied, or in audit mode proposed.
    pub fn patch(&self) -> Option<&Patch> {
        self.change().map(|c| &c.patch)
    }

    /// The storage added, or in audit mode proposed.
    pub fn storage(&self) -> Option<&AddedStorage> {
        self.change().and_then(|c| c.storage.as_ref())
    }

    /// The message of a denial (strict policy, invalid annotation).
    pub fn denied(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Invalid { denied, .. } => denied.as_deref(),
            _ => None,
        }
    }
}

/// Who a decision is about, for warnings and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Ident<'r> {
    pub kind: &'r str,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: &'r str,
    /// Name, or the `generateName` prefix.
    pub name: &'r str,
    /// Whether `name` is a `generateName` prefix.
    pub generated: bool,
}

impl<'r> Ident<'r> {
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

impl fmt::Display for Ident<'_> {
    /// `Kind namespace/name` (`Kind name` when cluster-scoped), with `*` after a `generateName`
    /// prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ident {
            kind,
            namespace,
            name,
            generated,
        } = self;
        let slash = if namespace.is_empty() { "" } else { "/" };
        let star = if *generated { "*" } else { "" };
        [kind, " ", namespace, slash, name, star]
            .into_iter()
            .try_for_each(|part| f.write_str(part))
    }
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
    // Audit mode never changes admission, not even under a strict policy.
    let denied = (policy.strict && policy.mode_for(ident.namespace) == Mode::Enforce)
        .then(|| format!("kube-persist (strict policy): invalid annotation on {ident}: {reason}"));
    let mut d = Decision::of(Verdict::Invalid {
        reason: format!("invalid annotation: {reason}"),
        denied,
    });
    for e in errors {
        d = d.warn(format!("kube-persist: {ident} left unchanged: {e}"));
    }
    d
}

/// The decision to add storage: applied in enforce mode, only reported in audit mode.
/// `what` describes the addition (e.g. `100Gi volume`), `details` is appended to the reason.
pub(crate) fn propose(
    ident: &Ident<'_>,
    policy: &Policy,
    storage: &StorageSpec<'_>,
    patch: Patch,
    what: &str,
    details: &str,
    warnings: Vec<String>,
) -> Decision {
    let mode = policy.mode_for(ident.namespace);
    let change = Change {
        reason: match mode {
            Mode::Enforce => ["added ", what, details].concat(),
            Mode::Audit => ["audit mode: would add ", what, details].concat(),
        },
        patch,
        storage: Some(AddedStorage {
            storage_class_name: storage.storage_class_name.to_string(),
            size: storage.size.as_str().to_string(),
            source: storage.source,
        }),
    };
    let verdict = match mode {
        Mode::Enforce => Verdict::Mutate(change),
        Mode::Audit => Verdict::WouldMutate(change),
    };
    let line = added_line(ident, mode, what, &storage.storage_class_name);
    let mut d = Decision::of(verdict).warn(line);
    d.warnings.extend(warnings);
    d
}

/// `kube-persist: added 100Gi volume on StorageClass nfs-client (Prometheus monitoring/k8s)`,
/// or in audit mode `kube-persist: audit mode, would add ...`.
pub(crate) fn added_line(ident: &Ident<'_>, mode: Mode, what: &str, class: &str) -> String {
    let verb = match mode {
        Mode::Enforce => "added",
        Mode::Audit => "audit mode, would add",
    };
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "kube-persist: {verb} {what} on StorageClass {class} ({ident})"
    );
    line
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
    pub request: Request<'a>,
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
pub fn encode(api_version: &str, uid: &str, decision: &Decision) -> Vec<u8> {
    let (patch, storage) = match &decision.verdict {
        Verdict::Mutate(change) => (Some(&change.patch), change.storage.as_ref()),
        Verdict::WouldMutate(change) => (None, change.storage.as_ref()),
        _ => (None, None),
    };
    let patch = patch.filter(|p| !p.is_empty());
    let review = ReviewOut {
        api_version,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed: decision.denied().is_none(),
            status: decision.denied().map(|message| StatusOut {
                code: 403,
                reason: "Forbidden",
                message,
            }),
            patch_type: patch.map(|_| "JSONPatch"),
            patch,
            warnings: &decision.warnings,
            audit_annotations: AuditAnnotations {
                decision: decision.outcome(),
                storage: storage
                    .map(|s| [s.storage_class_name.as_str(), "/", s.size.as_str()].concat()),
            },
        },
    };
    // Room for a typical response, so the buffer is not grown while it is written.
    let mut out = Vec::with_capacity(512 + patch.map_or(0, |p| p.json().len() * 4 / 3));
    // Strings, booleans and JSON values: writing them to a Vec cannot fail.
    let _ = crate::json::write(&mut out, &review);
    out
}

/// The AdmissionReview response, field for field as the API server reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The patch's JSON, in base64.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "patch_base64"
    )]
    patch: Option<&'a Patch>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    audit_annotations: AuditAnnotations,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    reason: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct AuditAnnotations {
    decision: Outcome,
    /// `class/size` of the storage added or proposed.
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<String>,
}

fn patch_base64<S: serde::Serializer>(patch: &Option<&Patch>, out: S) -> Result<S::Ok, S::Error> {
    let json = patch.map_or("[]", |p| p.json());
    out.serialize_str(&base64::engine::general_purpose::STANDARD.encode(json))
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
