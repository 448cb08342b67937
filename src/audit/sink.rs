//! Audit sinks. `write` returns only once the record is in the kernel's hands (written to the file
//! descriptor, not buffered in user space), so a caller that forwards after a successful `write`
//! never forwards an unaudited message.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Record;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write audit record to {target}")]
    Write {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where audit records go.
pub trait Sink: Send + Sync {
    /// Writes one record; an error means the record was not stored and the caller must not forward
    /// the message the record describes.
    fn write(&self, record: &Record) -> Result<(), AuditError>;

    /// Writes several records with as few system calls as the sink allows (default: one by one).
    fn write_batch(&self, records: &[Record]) -> Result<(), AuditError> {
        records.iter().try_for_each(|r| self.write(r))
    }
}

/// JSON Lines file, created with mode 0600, appended to, one `write(2)` per batch.
pub struct JsonlSink {
    path: PathBuf,
    /// The file and a line buffer kept between writes (one record per message: no allocation
    /// per write).
    file: Mutex<(File, Vec<u8>)>,
}

/// A write buffer grown past this by one huge batch is given back afterwards.
const KEEP_BUFFER: usize = 256 * 1024;

impl JsonlSink {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(JsonlSink {
            path: path.to_owned(),
            file: Mutex::new((file, Vec::with_capacity(4096))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serializes `records` into the kept buffer and writes them with one `write(2)`.
    fn write_records<'r>(
        &self,
        records: impl IntoIterator<Item = &'r Record>,
    ) -> Result<(), AuditError> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, buf) = &mut *guard;
        buf.clear();
        for r in records {
            r.write_json(buf);
            buf.push(b'\n');
        }
        let result = file.write_all(buf).map_err(|source| AuditError::Write {
            target: self.path.display().to_string(),
            source,
        });
        if buf.capacity() > KEEP_BUFFER {
            *buf = Vec::with_capacity(4096);
        }
        result
    }
}

impl Sink for JsonlSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        self.write_records([record])
    }

    fn write_batch(&self, records: &[Record]) -> Result<(), AuditError> {
        self.write_records(records)
    }
}

/// Human-oriented copy of each record on stderr (used with `--verbose` and as the fallback when
/// journald is absent).
pub struct StderrSink;

impl Sink for StderrSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        let mut line = String::from("aip audit: ");
        line.push_str(&record.to_json());
        line.push('\n');
        std::io::stderr()
            .lock()
            .write_all(line.as_bytes())
            .map_err(|source| AuditError::Write {
                target: "stderr".into(),
                source,
            })
    }
}

/// Keeps records in memory (tests, conformance runner).
#[derive(Default)]
pub struct MemorySink {
    records: Mutex<Vec<Record>>,
}

impl MemorySink {
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Sink for MemorySink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
        Ok(())
    }
}

/// Writes to every sink; fails if any required sink fails.
pub struct MultiSink {
    sinks: Vec<Box<dyn Sink>>,
}

impl MultiSink {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        MultiSink { sinks }
    }
}

impl Sink for MultiSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        self.sinks.iter().try_for_each(|s| s.write(record))
    }

    fn write_batch(&self, records: &[Record]) -> Result<(), AuditError> {
        self.sinks.iter().try_for_each(|s| s.write_batch(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn jsonl_file_is_private_and_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = JsonlSink::open(&path).unwrap();
        sink.write(&Record::event("A")).unwrap();
        sink.write_batch(&[Record::event("B"), Record::event("C")])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["event"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(events, ["A", "B", "C"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn jsonl_refuses_a_symlinked_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            JsonlSink::open(&link),
            Err(AuditError::Open { .. })
        ));
    }
}
