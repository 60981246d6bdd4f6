//! `kube-persist mutate`: the webhook's decisions applied to manifest files, offline.
//!
//! Each object is sent through the admission engine as the AdmissionReview the API server would
//! send ([`super::engine`]) and the returned JSON Patch is applied to it: the command and the
//! webhook cannot disagree. Documents are read, decided and written one at a time.
//!
//! Exit codes: 2 when any input could not be read or parsed (whatever else happened), else 1
//! with `--check` when any object would be changed or is at risk ([`super::gap`]) or carries
//! invalid kube-persist annotations, else 0.

use std::{
    fmt::Write as _,
    io::{self, BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::{
    engine::{self, Decided, TypeMeta},
    gap,
    manifest::{self, Format, InputError, RawDocument, Stream},
};
use crate::{
    admission::{Outcome, Patch, Verdict},
    cli::{MutateArgs, MutateOutput, OperationArg},
    policy::Policy,
};

/// Validated settings of `kube-persist mutate`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Files, directories and `-`.
    pub paths: Vec<PathBuf>,
    pub policy: Policy,
    /// What to print; `None` keeps each document's own format.
    pub output: Option<MutateOutput>,
    /// The simulated operation.
    pub operation: OperationArg,
    /// `--check`: exit 1 when any object would change or lacks persistent storage.
    pub check: bool,
    /// Namespace of namespaced objects that set none.
    pub namespace: String,
}

impl Config {
    /// Validates the flags and loads the policy file.
    pub fn from_args(args: MutateArgs) -> anyhow::Result<Config> {
        let MutateArgs {
            paths,
            policy,
            output,
            operation,
            check,
            namespace,
        } = args;
        let policy = match policy {
            Some(path) => Policy::load(&path)?,
            None => Policy::default(),
        };
        Ok(Config {
            paths,
            policy,
            output,
            operation,
            check,
            namespace,
        })
    }
}

/// Counts over one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects decided (list items count one each).
    pub objects: usize,
    /// Objects the webhook would change (mutated, or would-mutate in audit mode).
    pub changed: usize,
    /// Objects left without persistent storage and not opted out.
    pub at_risk: usize,
    /// Objects with invalid kube-persist annotations.
    pub invalid: usize,
    /// Inputs, documents or objects that could not be read.
    pub errors: usize,
}

impl Summary {
    /// Whether `--check` fails.
    pub fn check_fails(&self) -> bool {
        self.changed + self.at_risk + self.invalid > 0
    }

    /// The exit code: 2 for input errors (they take precedence), 1 when `check` fails, else 0.
    pub fn exit_code(&self, check: bool) -> u8 {
        if self.errors > 0 {
            2
        } else if check && self.check_fails() {
            1
        } else {
            0
        }
    }
}

pub fn run(args: MutateArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_args(args)?;
    let stdout = BufWriter::new(io::stdout().lock());
    let stderr = io::stderr().lock();
    let summary = execute(&config, stdout, stderr).context("cannot write the output")?;
    Ok(ExitCode::from(summary.exit_code(config.check)))
}

/// Processes every input of `config`, writing manifests (or patches, or diffs) to `out` and a
/// line per object and a final count to `log`.
pub fn execute<W: Write, L: Write>(config: &Config, out: W, log: L) -> io::Result<Summary> {
    let mut run = Run {
        config,
        auto_format: None,
        stream: Stream::new(out),
        log,
        summary: Summary::default(),
    };
    for input in manifest::expand(&config.paths) {
        let documents = match input.and_then(|input| manifest::documents(&input)) {
            Ok(documents) => documents,
            Err(error) => {
                run.error(&error)?;
                continue;
            }
        };
        let name = documents.name().to_string();
        for document in documents {
            match document {
                Ok(document) => run.document(&name, document)?,
                Err(error) => run.error(&error)?,
            }
        }
    }
    let Run {
        stream,
        mut log,
        summary,
        ..
    } = run;
    stream.finish()?;
    writeln!(log, "{}", summary_line(&summary, config.check))?;
    log.flush()?;
    Ok(summary)
}

fn summary_line(s: &Summary, check: bool) -> String {
    let mut line = format!(
        "kube-persist mutate: objects {}, changed {}, at risk {}, invalid annotations {}, input errors {}",
        s.objects, s.changed, s.at_risk, s.invalid, s.errors
    );
    if check {
        line.push_str(match (s.errors > 0, s.check_fails()) {
            (true, _) => "; check failed (input errors)",
            (false, true) => "; check failed",
            (false, false) => "; check passed",
        });
    }
    line
}

struct Run<'c, W, L> {
    config: &'c Config,
    /// The output format chosen by the first document when `--output` is not given.
    auto_format: Option<Format>,
    stream: Stream<W>,
    log: L,
    summary: Summary,
}

impl<W: Write, L: Write> Run<'_, W, L> {
    fn error(&mut self, error: &InputError) -> io::Result<()> {
        self.summary.errors += 1;
        writeln!(self.log, "error: {error}")
    }

    fn document(&mut self, input: &str, document: RawDocument) -> io::Result<()> {
        let Some(index) = document.index else {
            // Nothing but comments: kept in YAML output, dropped elsewhere.
            if self.format_of(&document) == Some(Format::Yaml) {
                self.stream.document(Format::Yaml, &document.text)?;
            }
            return Ok(());
        };
        let label = format!("{input}#{index}");
        let uid = format!("offline-{input}-{index}");
        let mut value = match document.parse() {
            Ok(value) => value,
            Err(problem) => {
                self.error(&InputError {
                    location: label,
                    problem,
                })?;
                return self.echo(&document);
            }
        };
        let changed = match list_items(&mut value) {
            Some((inherited, items)) => {
                let mut changed = false;
                for (i, item) in items.iter_mut().enumerate() {
                    let done = self.object(
                        item,
                        inherited.as_ref(),
                        &format!("{label}.items[{i}]"),
                        &format!("{uid}-{i}"),
                    )?;
                    changed |= done == Some(true);
                }
                changed
            }
            None => match self.object(&mut value, None, &label, &uid)? {
                Some(changed) => changed,
                None => return self.echo(&document),
            },
        };
        self.emit(&document, &label, &value, changed)
    }

    /// Decides one object and applies the webhook's patch to it: whether it changed, or `None`
    /// when it is not an object the engine can be asked about (already reported).
    fn object(
        &mut self,
        object: &mut Value,
        inherited: Option<&TypeMeta>,
        label: &str,
        uid: &str,
    ) -> io::Result<Option<bool>> {
        if !object.is_object() {
            self.error(&InputError {
                location: label.to_string(),
                problem: "not a Kubernetes object (expected a mapping with apiVersion and kind)"
                    .to_string(),
            })?;
            return Ok(None);
        }
        let Some(meta) = TypeMeta::of(object).or_else(|| inherited.cloned()) else {
            self.error(&InputError {
                location: label.to_string(),
                problem: "not a Kubernetes object: apiVersion or kind is missing".to_string(),
            })?;
            return Ok(None);
        };
        let config = self.config;
        let decide = |operation| {
            engine::decide(
                object,
                &meta,
                operation,
                uid,
                &config.namespace,
                &config.policy,
            )
        };
        let decided = match decide(config.operation) {
            Ok(decided) => decided,
            Err(e) => return self.object_error(label, e.to_string()),
        };
        if let Verdict::Error { reason } = &decided.decision.verdict {
            let reason = manifest::strip_location(reason).to_string();
            return self.object_error(label, reason);
        }
        let changes = decided.changes();
        let gap = meta
            .target()
            .and_then(|target| gap::of(target, object, &config.policy));
        // Opting out is judged as on CREATE: an UPDATE that is merely not allowed to add
        // storage does not make the object safe.
        let create_outcome = match (&gap, config.operation) {
            (Some(_), OperationArg::Update) if !changes => match decide(OperationArg::Create) {
                Ok(created) => created.decision.outcome(),
                Err(e) => return self.object_error(label, e.to_string()),
            },
            _ => decided.decision.outcome(),
        };
        // Objects the webhook changes are counted as changed, not as at risk.
        let at_risk = !changes && gap::at_risk(gap.as_ref(), false, create_outcome);
        let before = (config.output == Some(MutateOutput::Diff) && decided.patch().is_some())
            .then(|| object.clone());
        let applied = decided.patch().map_or(Ok(()), |patch| {
            let patch = patch.to_json_patch().map_err(|e| e.to_string())?;
            json_patch::patch(object, &patch).map_err(|e| e.to_string())
        });
        if let Err(e) = applied {
            return self.object_error(
                label,
                format!("internal error: the webhook's patch does not apply: {e}"),
            );
        }
        self.summary.objects += 1;
        self.summary.changed += usize::from(changes);
        self.summary.at_risk += usize::from(at_risk);
        self.summary.invalid += usize::from(decided.decision.outcome() == Outcome::Invalid);
        self.log_object(label, &decided, gap.as_ref().filter(|_| at_risk))?;
        match config.output {
            Some(MutateOutput::Patch) => {
                if let Some(patch) = decided.patch() {
                    self.print_patch(label, &decided.ident, patch)?;
                }
            }
            Some(MutateOutput::Diff) => {
                if let Some(before) = before {
                    self.print_diff(label, &decided.ident, &before, object)?;
                }
            }
            _ => {}
        }
        Ok(Some(decided.patch().is_some()))
    }

    fn object_error(&mut self, label: &str, problem: String) -> io::Result<Option<bool>> {
        self.error(&InputError {
            location: label.to_string(),
            problem,
        })?;
        Ok(None)
    }

    fn log_object(
        &mut self,
        label: &str,
        decided: &Decided,
        gap: Option<&gap::Gap>,
    ) -> io::Result<()> {
        let d = &decided.decision;
        let mut line = format!(
            "{label} {}: {} ({})",
            decided.ident,
            d.outcome().as_str(),
            d.reason()
        );
        if let Some(gap) = gap {
            let _ = write!(line, "; at risk: {gap}");
        }
        writeln!(self.log, "{line}")?;
        for warning in &d.warnings {
            writeln!(self.log, "  {warning}")?;
        }
        Ok(())
    }

    fn print_patch(&mut self, label: &str, ident: &str, patch: &Patch) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            source: &'a str,
            object: &'a str,
            patch: &'a Patch,
        }
        let line = Line {
            source: label,
            object: ident,
            patch,
        };
        let mut text = serde_json::to_string(&line).map_err(io::Error::other)?;
        text.push('\n');
        self.stream.raw(&text)
    }

    fn print_diff(
        &mut self,
        label: &str,
        ident: &str,
        before: &Value,
        after: &Value,
    ) -> io::Result<()> {
        let (old, new) = match (manifest::to_yaml(before), manifest::to_yaml(after)) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(problem), _) | (_, Err(problem)) => {
                self.object_error(label, problem)?;
                return Ok(());
            }
        };
        let diff = similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{label} {ident}"),
                &format!("{label} {ident} (mutated)"),
            )
            .to_string();
        self.stream.raw(&diff)
    }

    /// The format a document is written in, if it is written at all. Without `--output`, the
    /// first document's format is the stream's (kubectl reads a stream as JSON or as YAML by its
    /// first character), and documents of the other format are converted.
    fn format_of(&mut self, document: &RawDocument) -> Option<Format> {
        match self.config.output {
            None => Some(*self.auto_format.get_or_insert(document.format)),
            Some(MutateOutput::Yaml) => Some(Format::Yaml),
            Some(MutateOutput::Json) => Some(Format::Json),
            Some(MutateOutput::Patch | MutateOutput::Diff) => None,
        }
    }

    /// Writes a document that could not be processed as it was read, where the output format
    /// allows (JSON text is a valid YAML document, not the reverse): nothing is lost, and the
    /// exit code reports the problem.
    fn echo(&mut self, document: &RawDocument) -> io::Result<()> {
        match (self.format_of(document), document.format) {
            (Some(Format::Yaml), Format::Yaml) => {
                self.stream.document(Format::Yaml, &document.text)
            }
            (Some(format), Format::Json) => self
                .stream
                .document(format, &format!("{}\n", document.text)),
            _ => Ok(()),
        }
    }

    /// Writes a processed document: unchanged ones exactly as read when the format allows,
    /// changed ones re-rendered (keeping a YAML document's leading `---` and comment lines).
    fn emit(
        &mut self,
        document: &RawDocument,
        label: &str,
        value: &Value,
        changed: bool,
    ) -> io::Result<()> {
        let Some(format) = self.format_of(document) else {
            return Ok(());
        };
        let verbatim = !changed && format == document.format;
        let text = match format {
            Format::Yaml if verbatim => document.text.clone(),
            Format::Yaml => match manifest::to_yaml(value) {
                Ok(body) => format!("{}{body}", document.yaml_header()),
                Err(problem) => {
                    self.object_error(label, problem)?;
                    return self.echo(document);
                }
            },
            Format::Json if verbatim => format!("{}\n", document.text),
            Format::Json => manifest::to_json(value),
        };
        self.stream.document(format, &text)
    }
}

/// For a `List` (`kind` ending in `List`, with an `items` array): the type of items that set
/// none (from a typed list such as `StatefulSetList`), and the items.
fn list_items(value: &mut Value) -> Option<(Option<TypeMeta>, &mut Vec<Value>)> {
    let meta = TypeMeta::of(value)?;
    let item_kind = meta.kind.strip_suffix("List")?.to_string();
    let inherited = (!item_kind.is_empty()).then_some(TypeMeta {
        kind: item_kind,
        ..meta
    });
    let items = value.get_mut("items")?.as_array_mut()?;
    Some((inherited, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_put_input_errors_first() {
        let clean = Summary {
            objects: 3,
            ..Summary::default()
        };
        assert_eq!(clean.exit_code(true), 0);
        let changed = Summary {
            changed: 1,
            ..clean
        };
        assert_eq!(changed.exit_code(false), 0);
        assert_eq!(changed.exit_code(true), 1);
        let at_risk = Summary {
            at_risk: 1,
            ..clean
        };
        assert_eq!(at_risk.exit_code(true), 1);
        let broken = Summary {
            errors: 1,
            ..changed
        };
        assert_eq!(broken.exit_code(true), 2);
        assert_eq!(broken.exit_code(false), 2);
    }

    #[test]
    fn lists_yield_their_items_and_typed_lists_their_item_type() {
        let mut list = json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "items": [{}]});
        let (inherited, items) = list_items(&mut list).unwrap();
        assert_eq!(inherited.unwrap().kind, "StatefulSet");
        assert_eq!(items.len(), 1);
        let mut list = json!({"apiVersion": "v1", "kind": "List", "items": []});
        assert!(list_items(&mut list).unwrap().0.is_none());
        let mut not = json!({"apiVersion": "v1", "kind": "ConfigMap", "items": []});
        assert!(list_items(&mut not).is_none());
    }
}
