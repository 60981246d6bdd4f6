//! Reading manifests one document at a time, and writing them back.
//!
//! Inputs are files, directories (recursively, `.yaml`, `.yml` and `.json` files, in name
//! order, as `kubectl apply -R -f` reads them) and `-` for standard input. A YAML stream is cut
//! into documents at `---` and `...` lines without parsing it, so that one broken document does
//! not hide the others, memory is bounded by the largest document rather than the file, and an
//! unchanged document can be written back byte for byte (comments included). A JSON file holds
//! one object or several concatenated ones.
//!
//! YAML is read with Kubernetes' (YAML 1.1) conventions where they differ from YAML 1.2:
//! `0755` is octal and `yes`/`no`/`on`/`off` are booleans, as `kubectl` reads them.

use std::{
    collections::{HashSet, VecDeque},
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    ops::Range,
    path::{Path, PathBuf},
};

use serde_json::Value;

/// Documents larger than this are refused (the API server's own limit is about 3 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// How many leading bytes are checked for NUL bytes to tell binary files apart.
const SNIFF_BYTES: usize = 8 * 1024;

/// The name standard input is reported under.
pub const STDIN_NAME: &str = "<stdin>";

/// Syntax of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (and YAML streams).
    Yaml,
    Json,
}

/// One input: a file or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`).
    Stdin,
    File(PathBuf),
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Stdin => f.write_str(STDIN_NAME),
            Input::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An input that cannot be read, or a document that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct InputError {
    /// `file`, `file#3` or `file#3 (line 12)`.
    pub location: String,
    pub problem: String,
}

impl InputError {
    fn new(location: impl fmt::Display, problem: impl Into<String>) -> Self {
        InputError {
            location: location.to_string(),
            problem: problem.into(),
        }
    }
}

/// Expands `paths` into inputs, in order: directories recursively (manifest extensions only,
/// sorted by name, each directory once even through symbolic links), files as given, `-` as
/// standard input. A path that cannot be read takes its place in the order as an error.
pub fn expand(paths: &[PathBuf]) -> Vec<Result<Input, InputError>> {
    let mut inputs = Vec::new();
    let mut seen_dirs = HashSet::new();
    for path in paths {
        if path.as_os_str() == "-" {
            inputs.push(Ok(Input::Stdin));
            continue;
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => walk(path, &mut seen_dirs, &mut inputs),
            Ok(_) => inputs.push(Ok(Input::File(path.clone()))),
            Err(e) => inputs.push(Err(InputError::new(path.display(), e.to_string()))),
        }
    }
    inputs
}

fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, inputs: &mut Vec<Result<Input, InputError>>) {
    if let Ok(canonical) = dir.canonicalize()
        && !seen.insert(canonical)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            inputs.push(Err(InputError::new(dir.display(), e.to_string())));
            return;
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => inputs.push(Err(InputError::new(dir.display(), e.to_string()))),
        }
    }
    paths.sort();
    for path in paths {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, seen, inputs),
            Ok(_) if is_manifest_name(&path) => inputs.push(Ok(Input::File(path))),
            Ok(_) => {}
            Err(e) => inputs.push(Err(InputError::new(path.display(), e.to_string()))),
        }
    }
}

fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// One document of an input, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument {
    /// 1-based position among the input's non-empty documents; `None` for a document with
    /// nothing but comments, blank lines and markers (kept only to be written back).
    pub index: Option<usize>,
    pub format: Format,
    /// The exact text, with the `---` line that opened it and any comment lines.
    pub text: String,
    /// Line of the input its text starts on (1-based), for error messages.
    pub first_line: usize,
}

impl RawDocument {
    /// Parses the document into a JSON value (key order kept).
    pub fn parse(&self) -> Result<Value, String> {
        match self.format {
            Format::Json => serde_json::from_str(&self.text).map_err(|e| {
                // serde_json counts lines from the start of the document.
                format!(
                    "invalid JSON at line {}, column {}: {}",
                    self.first_line + e.line().saturating_sub(1),
                    e.column(),
                    strip_location(&e.to_string())
                )
            }),
            Format::Yaml => parse_yaml(&self.text).map_err(|(line, message)| match line {
                Some(line) => format!(
                    "invalid YAML at line {}: {message}",
                    self.first_line + line.saturating_sub(1)
                ),
                None => format!("invalid YAML: {message}"),
            }),
        }
    }

    /// The leading lines of a YAML document that carry no content: its `---` line and the
    /// comments and blank lines before the first content line (e.g. Helm's `# Source:`).
    pub fn yaml_header(&self) -> &str {
        if self.format != Format::Yaml {
            return "";
        }
        let mut end = 0;
        for line in self.text.split_inclusive('\n') {
            let trimmed = line.trim();
            let blank = trimmed.is_empty() || trimmed.starts_with('#');
            let bare_marker = marker(line.as_bytes()) == Some(Marker::Start)
                && is_blank_or_comment(line.get(3..).unwrap_or(""));
            if !(blank || bare_marker) || !line.ends_with('\n') {
                break;
            }
            end += line.len();
        }
        &self.text[..end]
    }
}

/// `message` without a trailing ` at line L[,] column C` (positions relative to a document or to
/// a synthetic review mean nothing to the user).
pub fn strip_location(message: &str) -> &str {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(text, _)| text)
}

/// Parses one YAML document into a value, with Kubernetes' conventions. On error: the line
/// within the document, if known, and the message.
pub fn parse_yaml(text: &str) -> Result<Value, (Option<usize>, String)> {
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| {
        let line = e
            .location()
            .and_then(|l| usize::try_from(l.line()).ok())
            .filter(|l| *l > 0);
        let message = e.without_snippet().to_string();
        // The location is reported against the file by the caller; the library's advice on
        // its own options means nothing to a user.
        let message = strip_location(&message);
        let message = message
            .split_once(", set DuplicateKeyPolicy")
            .map_or(message, |(m, _)| m);
        (line, message.to_string())
    })
}

/// Opens `input` and reads its documents lazily.
pub fn documents(input: &Input) -> Result<Documents, InputError> {
    let reader: Box<dyn BufRead> = match input {
        Input::Stdin => Box::new(BufReader::with_capacity(64 * 1024, io::stdin())),
        Input::File(path) => {
            let file = File::open(path).map_err(|e| InputError::new(input, e.to_string()))?;
            Box::new(BufReader::with_capacity(64 * 1024, file))
        }
    };
    Documents::new(input.to_string(), reader)
}

/// The documents of one input, in order.
pub struct Documents {
    name: String,
    source: Source,
    next_index: usize,
    line: usize,
}

enum Source {
    Yaml(YamlChunks<Box<dyn BufRead>>),
    Json {
        text: String,
        spans: VecDeque<Result<Range<usize>, String>>,
    },
}

impl Documents {
    /// Reads from `reader`, reporting errors under `name`. Refuses binary input (a NUL byte
    /// among the first bytes). A `.yaml` or `.yml` file is YAML (JSON is valid YAML too);
    /// anything else is JSON when its first character is `{`, else YAML.
    pub fn new(name: String, mut reader: Box<dyn BufRead>) -> Result<Documents, InputError> {
        let head = reader
            .fill_buf()
            .map_err(|e| InputError::new(&name, e.to_string()))?;
        let head = &head[..head.len().min(SNIFF_BYTES)];
        if head.contains(&0) {
            return Err(InputError::new(
                &name,
                "binary data, not a YAML or JSON manifest",
            ));
        }
        let first = head
            .strip_prefix(b"\xef\xbb\xbf")
            .unwrap_or(head)
            .iter()
            .find(|b| !b.is_ascii_whitespace());
        let yaml_name = Path::new(&name)
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml");
        let source = if first == Some(&b'{') && !yaml_name {
            let mut bytes = Vec::new();
            reader
                .take(MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| InputError::new(&name, e.to_string()))?;
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(InputError::new(
                    &name,
                    format!("JSON input larger than {MAX_DOCUMENT_BYTES} bytes"),
                ));
            }
            let text = String::from_utf8(bytes)
                .map_err(|e| InputError::new(&name, format!("not UTF-8 text: {e}")))?;
            let spans = json_spans(&text);
            Source::Json { text, spans }
        } else {
            Source::Yaml(YamlChunks::new(reader))
        };
        Ok(Documents {
            name,
            source,
            next_index: 1,
            line: 1,
        })
    }

    /// The input's name, as errors report it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Iterator for Documents {
    type Item = Result<RawDocument, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Json { text, spans } => {
                let span = spans.pop_front()?;
                let index = self.next_index;
                self.next_index += 1;
                Some(match span {
                    Ok(range) => {
                        let first_line = 1 + text[..range.start].matches('\n').count();
                        Ok(RawDocument {
                            index: Some(index),
                            format: Format::Json,
                            text: text[range].to_string(),
                            first_line,
                        })
                    }
                    Err(problem) => {
                        spans.clear();
                        Err(InputError::new(format!("{}#{index}", self.name), problem))
                    }
                })
            }
            Source::Yaml(chunks) => {
                let chunk = match chunks.next()? {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        return Some(Err(InputError::new(&self.name, e.to_string())));
                    }
                };
                let first_line = self.line;
                self.line += chunk.lines;
                let empty = chunk.too_large.is_none() && is_empty_document(&chunk.bytes);
                let index = (!empty).then(|| {
                    self.next_index += 1;
                    self.next_index - 1
                });
                let location = || match index {
                    Some(i) => format!("{}#{i} (line {first_line})", self.name),
                    None => format!("{} (line {first_line})", self.name),
                };
                if let Some(size) = chunk.too_large {
                    return Some(Err(InputError::new(
                        location(),
                        format!(
                            "document larger than {MAX_DOCUMENT_BYTES} bytes ({size} bytes or more)"
                        ),
                    )));
                }
                Some(match String::from_utf8(chunk.bytes) {
                    Ok(text) => Ok(RawDocument {
                        index,
                        format: Format::Yaml,
                        text,
                        first_line,
                    }),
                    Err(e) => {
                        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                        let line = first_line + valid.iter().filter(|b| **b == b'\n').count();
                        Err(InputError::new(
                            location(),
                            format!("not UTF-8 text (line {line})"),
                        ))
                    }
                })
            }
        }
    }
}

/// Where each JSON value of a concatenated stream starts and ends; a syntax error ends the
/// stream (there is no way to find the next value).
fn json_spans(text: &str) -> VecDeque<Result<Range<usize>, String>> {
    let mut spans = VecDeque::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    loop {
        match stream.next() {
            None => break,
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                let skipped = text[start..end].len() - text[start..end].trim_start().len();
                spans.push_back(Ok(start + skipped..end));
                start = end;
            }
            Some(Err(e)) => {
                spans.push_back(Err(format!("invalid JSON: {e}")));
                break;
            }
        }
    }
    spans
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// `---`: a document starts.
    Start,
    /// `...`: the document ends.
    End,
}

/// Whether `line` is a document marker: `---` or `...` at column 0, then nothing or a space.
fn marker(line: &[u8]) -> Option<Marker> {
    let kind = match line.get(..3)? {
        b"---" => Marker::Start,
        b"..." => Marker::End,
        _ => return None,
    };
    match line.get(3) {
        None | Some(b' ' | b'\t' | b'\r' | b'\n') => Some(kind),
        Some(_) => None,
    }
}

fn is_blank_or_comment(text: &str) -> bool {
    let t = text.trim();
    t.is_empty() || t.starts_with('#')
}

/// A document with no content: only blank lines, comments and bare markers.
fn is_empty_document(bytes: &[u8]) -> bool {
    bytes.split(|b| *b == b'\n').all(|line| {
        let rest = match marker(line) {
            Some(_) => &line[3..],
            None => line,
        };
        let rest = rest.strip_prefix(b"\xef\xbb\xbf").unwrap_or(rest);
        match rest.iter().position(|b| !b.is_ascii_whitespace()) {
            None => true,
            Some(i) => rest[i] == b'#',
        }
    })
}

/// The raw text of one YAML document.
struct Chunk {
    bytes: Vec<u8>,
    /// Lines in `bytes` (for the line numbers of later documents).
    lines: usize,
    /// Set (to the size reached) when the document was too large and its text dropped.
    too_large: Option<usize>,
}

/// Cuts a YAML stream into documents at marker lines (`---` starts a document, `...` ends
/// one), reading line by line.
struct YamlChunks<R> {
    reader: R,
    /// A `---` line already read: it opens the next document.
    carry: Option<Vec<u8>>,
    done: bool,
}

impl<R: BufRead> YamlChunks<R> {
    fn new(reader: R) -> Self {
        YamlChunks {
            reader,
            carry: None,
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for YamlChunks<R> {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = Chunk {
            bytes: Vec::new(),
            lines: 0,
            too_large: None,
        };
        let mut size = 0;
        if let Some(line) = self.carry.take() {
            size = line.len();
            push(&mut chunk, line, size);
        }
        loop {
            let mut line = Vec::new();
            match (&mut self.reader)
                .take(MAX_DOCUMENT_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(0) => {
                    self.done = true;
                    return (size > 0).then_some(Ok(chunk));
                }
                Ok(n) => size += n,
            }
            match marker(&line) {
                Some(Marker::Start) if size > line.len() => {
                    self.carry = Some(line);
                    return Some(Ok(chunk));
                }
                Some(Marker::End) => {
                    push(&mut chunk, line, size);
                    return Some(Ok(chunk));
                }
                _ => push(&mut chunk, line, size),
            }
        }
    }
}

fn push(chunk: &mut Chunk, line: Vec<u8>, size: usize) {
    chunk.lines += usize::from(line.ends_with(b"\n"));
    if size > MAX_DOCUMENT_BYTES {
        chunk.bytes = Vec::new();
        chunk.too_large = Some(size);
    } else {
        chunk.bytes.extend_from_slice(&line);
    }
}

/// Renders `value` as a YAML document (block style, two-space indentation, key order kept).
pub fn to_yaml(value: &Value) -> Result<String, String> {
    // Long single-line strings stay single-line (folding them would be a gratuitous change);
    // strings with newlines still become literal blocks.
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
    };
    let mut text = serde_saphyr::to_string_with_options(value, options)
        .map_err(|e| format!("cannot render YAML: {e}"))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Renders `value` as indented JSON with a final newline.
pub fn to_json(value: &Value) -> String {
    // A `Value` always serializes.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes a stream of documents of one format: YAML documents separated by `---` lines (unless
/// they bring their own, or the previous one ended with `...`), JSON documents concatenated, as
/// `kubectl` reads them.
pub struct Stream<W> {
    out: W,
    /// A YAML document was written and not closed by `...`: the next one needs a `---`.
    open: bool,
    newline: bool,
}

impl<W: Write> Stream<W> {
    pub fn new(out: W) -> Self {
        Stream {
            out,
            open: false,
            newline: true,
        }
    }

    /// Writes one document. A YAML `text` may start with its own `---` line.
    pub fn document(&mut self, format: Format, text: &str) -> io::Result<()> {
        if !self.newline {
            self.out.write_all(b"\n")?;
        }
        if self.open && marker(text.as_bytes()) != Some(Marker::Start) {
            self.out.write_all(b"---\n")?;
        }
        self.out.write_all(text.as_bytes())?;
        self.newline = text.is_empty() || text.ends_with('\n');
        let closed = text
            .trim_end()
            .rsplit('\n')
            .next()
            .is_some_and(|l| marker(l.as_bytes()) == Some(Marker::End));
        self.open = format == Format::Yaml && !closed;
        Ok(())
    }

    /// Writes text that is not a document (patches, diffs).
    pub fn raw(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn docs(text: &str) -> Vec<Result<RawDocument, InputError>> {
        let reader: Box<dyn BufRead> = Box::new(io::Cursor::new(text.as_bytes().to_vec()));
        Documents::new("f.yaml".to_string(), reader)
            .unwrap()
            .collect()
    }

    #[test]
    fn yaml_streams_split_at_markers_and_keep_every_byte() {
        let text = "# top comment\n---\n# Source: a.yaml\na: 1\n---\nb: 2\n...\n---\n# only a comment\n--- \nc: [1,\n";
        let out = docs(text);
        let texts: Vec<&str> = out
            .iter()
            .map(|d| d.as_ref().unwrap().text.as_str())
            .collect();
        assert_eq!(texts.concat(), text, "nothing lost, nothing added");
        let indexes: Vec<Option<usize>> = out.iter().map(|d| d.as_ref().unwrap().index).collect();
        assert_eq!(indexes, vec![None, Some(1), Some(2), None, Some(3)]);
        let lines: Vec<usize> = out.iter().map(|d| d.as_ref().unwrap().first_line).collect();
        assert_eq!(lines, vec![1, 2, 5, 8, 10]);
        let third = out[4].as_ref().unwrap();
        let err = third.parse().unwrap_err();
        assert!(err.starts_with("invalid YAML at line 1"), "{err}");
        assert_eq!(out[1].as_ref().unwrap().parse().unwrap(), json!({"a": 1}));
        assert_eq!(
            out[1].as_ref().unwrap().yaml_header(),
            "---\n# Source: a.yaml\n"
        );
    }

    #[test]
    fn markers_need_column_zero_and_a_separator() {
        assert_eq!(marker(b"---\n"), Some(Marker::Start));
        assert_eq!(marker(b"--- # x\n"), Some(Marker::Start));
        assert_eq!(marker(b"---"), Some(Marker::Start));
        assert_eq!(marker(b"...\r\n"), Some(Marker::End));
        assert_eq!(marker(b"----\n"), None);
        assert_eq!(marker(b" ---\n"), None);
        assert_eq!(marker(b"---x\n"), None);
    }

    #[test]
    fn kubernetes_yaml_conventions() {
        let v = parse_yaml("mode: 0755\nflag: yes\nport: \"8080\"\nname: on-call\n").unwrap();
        assert_eq!(
            v,
            json!({"mode": 493, "flag": true, "port": "8080", "name": "on-call"})
        );
    }

    #[test]
    fn yaml_rendering_round_trips_tricky_scalars() {
        let value = json!({
            "strings": ["true", "yes", "no", "on", "off", "null", "~", "", "0755", "1e3", "0x1F",
                "8080", "1.0", "- a", "a: b", "#c", "*x", "&y", "!z", "%p", "@q", "`r", "{s}",
                "[t]", "  lead", "trail  ", "multi\nline\n", "no final newline\nx", "tab\there",
                "quote'\"", "€uro", ".inf", ".nan", "2024-01-01", "=", "<<", "y", "n", "NO"],
            "numbers": [0, -1, 1.5, 18446744073709551615u64, -9223372036854775808i64],
            "empty": {"map": {}, "list": []},
            "nested": [{"a": [{"b": null}]}],
            "long": "x ".repeat(100),
        });
        let text = to_yaml(&value).unwrap();
        assert_eq!(parse_yaml(&text).unwrap(), value, "{text}");
    }

    #[test]
    fn json_streams_are_split_into_values() {
        let text = "{\"a\": 1}\n\n  {\"b\":\n 2}\n{\"c\": ";
        let reader: Box<dyn BufRead> = Box::new(io::Cursor::new(text.as_bytes().to_vec()));
        let out: Vec<_> = Documents::new("f.json".to_string(), reader)
            .unwrap()
            .collect();
        assert_eq!(out.len(), 3);
        let second = out[1].as_ref().unwrap();
        assert_eq!(second.text, "{\"b\":\n 2}");
        assert_eq!(second.first_line, 3);
        assert_eq!(second.format, Format::Json);
        assert_eq!(second.index, Some(2));
        let err = out[2].as_ref().unwrap_err();
        assert_eq!(err.location, "f.json#3");
    }

    #[test]
    fn yaml_files_may_hold_flow_mappings_and_json() {
        let reader: Box<dyn BufRead> =
            Box::new(io::Cursor::new(b"{a: 1}\n---\n{\"b\": 2}\n".to_vec()));
        let out: Vec<_> = Documents::new("flow.yaml".to_string(), reader)
            .unwrap()
            .map(|d| d.unwrap())
            .collect();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|d| d.format == Format::Yaml));
        assert_eq!(out[0].parse().unwrap(), json!({"a": 1}));
        assert_eq!(out[1].parse().unwrap(), json!({"b": 2}));
    }

    #[test]
    fn binary_and_non_utf8_input_is_refused_with_its_location() {
        let reader: Box<dyn BufRead> =
            Box::new(io::Cursor::new(b"\x7fELF\x02\x01\x00\x00".to_vec()));
        let err = Documents::new("bin".to_string(), reader).err().unwrap();
        assert_eq!(err.location, "bin");
        assert!(err.problem.contains("binary"), "{err}");
        let reader: Box<dyn BufRead> =
            Box::new(io::Cursor::new(b"a: 1\n---\nb: \xff\xfe\n".to_vec()));
        let out: Vec<_> = Documents::new("latin1.yaml".to_string(), reader)
            .unwrap()
            .collect();
        assert!(out[0].is_ok());
        let err = out[1].as_ref().unwrap_err();
        assert_eq!(err.location, "latin1.yaml#2 (line 2)");
        assert_eq!(err.problem, "not UTF-8 text (line 3)");
    }

    #[test]
    fn the_stream_separates_yaml_documents_and_concatenates_json() {
        let mut stream = Stream::new(Vec::new());
        stream.document(Format::Yaml, "a: 1").unwrap();
        stream.document(Format::Yaml, "---\nb: 2\n").unwrap();
        stream.document(Format::Yaml, "c: 3\n...\n").unwrap();
        stream.document(Format::Yaml, "d: 4\n").unwrap();
        stream.document(Format::Yaml, "# e\n").unwrap();
        let out = String::from_utf8(stream.finish().unwrap()).unwrap();
        assert_eq!(out, "a: 1\n---\nb: 2\n---\nc: 3\n...\nd: 4\n---\n# e\n");
        let mut stream = Stream::new(Vec::new());
        stream.document(Format::Json, "{}\n").unwrap();
        stream.document(Format::Json, "{\"a\": 1}").unwrap();
        stream.document(Format::Json, "{}\n").unwrap();
        let out = String::from_utf8(stream.finish().unwrap()).unwrap();
        assert_eq!(out, "{}\n{\"a\": 1}\n{}\n");
    }

    #[test]
    fn directories_are_walked_in_name_order_for_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        for name in [
            "b/c/z.yml",
            "b/a.json",
            "a.yaml",
            "README.md",
            "b/c/.x.yaml",
        ] {
            std::fs::write(root.join(name), "{}").unwrap();
        }
        let missing = root.join("missing.yaml");
        let inputs = expand(&[root.to_path_buf(), missing.clone(), PathBuf::from("-")]);
        let names: Vec<String> = inputs
            .iter()
            .map(|i| match i {
                Ok(Input::File(p)) => p.strip_prefix(root).unwrap().display().to_string(),
                Ok(Input::Stdin) => "-".to_string(),
                Err(e) => format!("error {}", e.location),
            })
            .collect();
        let missing = format!("error {}", missing.display());
        assert_eq!(
            names,
            [
                "a.yaml",
                "b/a.json",
                "b/c/.x.yaml",
                "b/c/z.yml",
                &missing,
                "-"
            ]
        );
    }
}
