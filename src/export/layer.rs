//! The layer tar writer: reproducible entries (numeric owners, no user or group names, one
//! fixed mtime unless asked to keep them, PAX records only for xattrs), hard links within a
//! layer as link entries, and the digests of what was written.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::diff::Sink;
use super::tree::{as_path, join, read_xattrs, Kind, Meta, Tree, Xattrs};
use super::ExportError;
use crate::fetch::digest::hex;

/// A writer that hashes (sha256) and counts what goes through it.
pub struct Digesting<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Digesting<W> {
    pub fn new(inner: W) -> Digesting<W> {
        Digesting {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the `sha256:...` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex(&self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How layer entries' times are set.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Every entry's mtime unless `keep` (SOURCE_DATE_EPOCH, else 0).
    pub epoch: u64,
    /// Keep each file's own mtime (whole seconds).
    pub keep: bool,
}

/// Writes one layer's entries as a tar stream into `W`.
pub struct LayerWriter<W: Write> {
    tar: tar::Builder<W>,
    times: Times,
    /// The first path written for each (device, inode) of a file with several links.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn write_err(what: &str) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        context: what.to_owned(),
        source,
    }
}

/// One PAX record: `LEN key=value\n`, where LEN counts the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Reads exactly `size` bytes from a file, failing if it is shorter or longer (it changed).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other("the file grew while being read")),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::other("the file shrank while being read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W, times: Times) -> LayerWriter<W> {
        LayerWriter {
            tar: tar::Builder::new(out),
            times,
            links: HashMap::new(),
        }
    }

    /// Ends the tar stream and returns the writer.
    pub fn finish(self) -> Result<W, ExportError> {
        self.tar.into_inner().map_err(write_err("finishing a layer"))
    }

    fn header(&self, kind: tar::EntryType, meta: &Meta) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(meta.mode);
        header.set_uid(u64::from(meta.uid));
        header.set_gid(u64::from(meta.gid));
        header.set_size(0);
        let mtime = if self.times.keep {
            meta.mtime.max(0) as u64
        } else {
            self.times.epoch
        };
        header.set_mtime(mtime);
        header
    }

    fn pax(&mut self, rel: &[u8], xattrs: &Xattrs) -> Result<(), ExportError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (name, value) in xattrs {
            data.extend(pax_record(&[b"SCHILY.xattr.", name.as_slice()].concat(), value));
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        header.set_mtime(self.times.epoch);
        header.set_size(data.len() as u64);
        // The name of a PAX header is informational; a fixed one keeps it short and stable.
        header
            .set_path("PaxHeaders/xattrs")
            .map_err(write_err("writing a PAX header"))?;
        header.set_cksum();
        let shown = String::from_utf8_lossy(rel).into_owned();
        self.tar
            .append(&header, data.as_slice())
            .map_err(|source| ExportError::Write {
                context: format!("writing the xattrs of {shown}"),
                source,
            })
    }

    fn append(&mut self, header: &mut tar::Header, rel: &[u8], data: impl Read) -> Result<(), ExportError> {
        self.tar
            .append_data(header, as_path(rel), data)
            .map_err(|source| ExportError::Write {
                context: format!("writing {}", String::from_utf8_lossy(rel)),
                source,
            })
    }

    fn append_link(&mut self, header: &mut tar::Header, rel: &[u8], target: &[u8]) -> Result<(), ExportError> {
        self.tar
            .append_link(header, as_path(rel), as_path(target))
            .map_err(|source| ExportError::Write {
                context: format!("writing {}", String::from_utf8_lossy(rel)),
                source,
            })
    }
}

fn read_err(tree: &Tree, rel: &[u8]) -> impl FnOnce(io::Error) -> ExportError {
    let context = format!("reading {}", tree.show(rel));
    move |source| ExportError::Read { context, source }
}

impl<W: Write> Sink for LayerWriter<W> {
    fn entry(&mut self, tree: &Tree, rel: &[u8], meta: &Meta, dir_xattrs: &Xattrs) -> Result<(), ExportError> {
        match meta.kind {
            Kind::Dir => {
                self.pax(rel, dir_xattrs)?;
                let mut header = self.header(tar::EntryType::Directory, meta);
                self.append(&mut header, rel, io::empty())
            }
            Kind::Regular => {
                if meta.nlink > 1 {
                    if let Some(first) = self.links.get(&(meta.dev, meta.ino)).cloned() {
                        let mut header = self.header(tar::EntryType::Link, meta);
                        return self.append_link(&mut header, rel, &first);
                    }
                }
                let file = tree.open_file(rel, meta).map_err(read_err(tree, rel))?;
                let xattrs = read_xattrs(std::os::fd::AsFd::as_fd(&file)).map_err(read_err(tree, rel))?;
                self.pax(rel, &xattrs)?;
                let mut header = self.header(tar::EntryType::Regular, meta);
                header.set_size(meta.size);
                let data = Exact {
                    inner: io::BufReader::with_capacity(256 << 10, file),
                    left: meta.size,
                };
                self.append(&mut header, rel, data)?;
                if meta.nlink > 1 {
                    self.links.insert((meta.dev, meta.ino), rel.to_vec());
                }
                Ok(())
            }
            Kind::Symlink => {
                let target = tree.read_link(rel).map_err(read_err(tree, rel))?;
                let mut header = self.header(tar::EntryType::Symlink, meta);
                self.append_link(&mut header, rel, &target)
            }
            Kind::Char | Kind::Block => {
                let kind = if meta.kind == Kind::Char {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut header = self.header(kind, meta);
                let (major, minor) = (libc::major(meta.rdev), libc::minor(meta.rdev));
                header
                    .set_device_major(major)
                    .and_then(|()| header.set_device_minor(minor))
                    .map_err(write_err("writing a device entry"))?;
                self.append(&mut header, rel, io::empty())
            }
            Kind::Fifo => {
                let mut header = self.header(tar::EntryType::Fifo, meta);
                self.append(&mut header, rel, io::empty())
            }
        }
    }

    fn whiteout(&mut self, dir: &[u8], name: &[u8]) -> Result<(), ExportError> {
        let meta = Meta {
            kind: Kind::Regular,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
            rdev: 0,
        };
        let mut header = self.header(tar::EntryType::Regular, &meta);
        header.set_mtime(self.times.epoch);
        self.append(&mut header, &join(dir, name), io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (key, value) in [
            ("k", "v".to_owned()),
            ("SCHILY.xattr.user.a", "x".repeat(85)),
            ("a", "y".repeat(994)),
        ] {
            let record = pax_record(key.as_bytes(), value.as_bytes());
            let text = String::from_utf8(record.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len(), "{text:?}");
        }
    }
}
