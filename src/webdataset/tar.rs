//! A small streaming tar parser and writer: ustar, GNU long names, pax `path`/`size` records, base-256 sizes.
//! It reads entry by entry from any `Read`, never holding more than one member, and reports damage as data
//! (`TarError::Truncated` / `TarError::Corrupt`) rather than panicking.

use std::io::{self, Read, Write};

pub(crate) const BLOCK: usize = 512;

/// What kind of tar entry a header describes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file: a potential sample member.
    File,
    /// A directory: carries no data and belongs to no sample.
    Directory,
    /// A hard link, symlink, device or FIFO: counted as a member that cannot belong to a sample. Carries no
    /// data whatever its size field says (as Python's `tarfile` reads them).
    Special(u8),
    /// An entry whose data is not a sample's member but takes room in the stream: GNU sparse (`S`),
    /// multi-volume continuation (`M`), volume label (`V`), dump directory (`D`) and unknown type flags. Its
    /// data is skipped by the header's size (as `tarfile` does), so the stream stays aligned.
    Skipped(u8),
}

/// One entry's header, after applying GNU long-name and pax records.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub size: u64,
}

/// Damage found in the stream.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The stream ended inside a header or a member.
    Truncated(String),
    /// A header is not a valid tar header, or a compressed stream is corrupt.
    Corrupt(String),
    /// The operating system failed to read (not a property of the bytes).
    Io(io::Error),
}

fn classify(e: io::Error, what: &str) -> TarError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => TarError::Truncated(format!("stream ends inside {what}")),
        // flate2 reports corrupt deflate data (and a gzip stream cut mid-way) as InvalidInput/InvalidData.
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            if e.to_string().contains("unexpected end") || e.to_string().contains("EOF") {
                TarError::Truncated(format!("compressed stream ends inside {what}: {e}"))
            } else {
                TarError::Corrupt(format!("corrupt compressed stream inside {what}: {e}"))
            }
        }
        _ => TarError::Io(e),
    }
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read (less than `buf.len()` only at
/// the end of the stream).
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian two's complement, positive values only here.
        if field[0] & 0x40 != 0 {
            return None;
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let s = std::str::from_utf8(&s).ok()?.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// A reader that counts the bytes read through it.
pub(crate) struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Streaming reader of tar entries.
pub(crate) struct TarReader<R> {
    r: Counted<R>,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader { r: Counted { inner: r, read: 0 }, done: false }
    }

    /// Bytes of the archive read so far: after [`TarReader::next_entry`], where the entry's data starts.
    pub fn position(&self) -> u64 {
        self.r.read
    }

    /// The next file-system entry, or `None` at the end of the archive (a zero block or a clean end of stream
    /// at a block boundary).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            if self.done {
                return Ok(None);
            }
            let mut h = [0u8; BLOCK];
            let n = read_up_to(&mut self.r, &mut h).map_err(|e| classify(e, "a header"))?;
            if n < BLOCK {
                self.done = true;
                // A cut inside the end-of-archive marker loses nothing; any other early end may have cut a
                // member off (tar writers always end with the marker), so it is a truncation.
                return if n > 0 && h[..n].iter().all(|&b| b == 0) && long_name.is_none() && pax_path.is_none() {
                    Ok(None)
                } else if n == 0 {
                    Err(TarError::Truncated("stream ends without the end-of-archive marker".into()))
                } else {
                    Err(TarError::Truncated(format!("stream ends inside a header ({n} of {BLOCK} bytes)")))
                };
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let stored = parse_octal(&h[148..156])
                .ok_or_else(|| TarError::Corrupt("header checksum field is not a number".into()))?;
            let unsigned: u64 =
                h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
            let signed: i64 =
                h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as i8 as i64 }).sum();
            if stored != unsigned && stored as i64 != signed {
                return Err(TarError::Corrupt(format!(
                    "header checksum mismatch (stored {stored}, computed {unsigned}) after entry name {:?}",
                    String::from_utf8_lossy(cstr(&h[0..100]))
                )));
            }
            let size = match pax_size.take() {
                Some(s) => s,
                None => {
                    parse_octal(&h[124..136]).ok_or_else(|| TarError::Corrupt("size field is not a number".into()))?
                }
            };
            let typeflag = h[156];
            match typeflag {
                b'L' | b'K' | b'x' | b'g' => {
                    if size > 1 << 20 {
                        return Err(TarError::Corrupt(format!("extended header of {size} bytes")));
                    }
                    let mut data = vec![0u8; size as usize];
                    self.read_data_into(&mut data, size)?;
                    match typeflag {
                        b'L' => long_name = Some(cstr(&data).to_vec()),
                        b'x' => {
                            for (k, v) in parse_pax(&data) {
                                match k.as_slice() {
                                    b"path" => pax_path = Some(v),
                                    b"size" => {
                                        pax_size = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {} // long link names and global pax headers do not change member names
                    }
                    continue;
                }
                _ => {}
            }
            let name = if let Some(p) = pax_path.take() {
                p
            } else if let Some(l) = long_name.take() {
                l
            } else {
                let base = cstr(&h[0..100]);
                let is_ustar = &h[257..262] == b"ustar";
                let prefix = if is_ustar { cstr(&h[345..500]) } else { &[][..] };
                if prefix.is_empty() {
                    base.to_vec()
                } else {
                    let mut n = prefix.to_vec();
                    n.push(b'/');
                    n.extend_from_slice(base);
                    n
                }
            };
            let kind = match typeflag {
                b'0' | 0 | b'7' => EntryKind::File,
                b'5' => EntryKind::Directory,
                b'1' | b'2' | b'3' | b'4' | b'6' => EntryKind::Special(typeflag),
                other => EntryKind::Skipped(other),
            };
            // An old-GNU sparse header may be followed by extension blocks (each flags whether another follows)
            // before its data.
            if typeflag == b'S' && h[482] != 0 {
                let mut more = true;
                let mut blocks = 0;
                while more {
                    let mut ext = [0u8; BLOCK];
                    self.r.read_exact(&mut ext).map_err(|e| classify(e, "a sparse extension header"))?;
                    more = ext[504] != 0;
                    blocks += 1;
                    if blocks > 1 << 16 {
                        return Err(TarError::Corrupt("more than 65536 sparse extension headers".into()));
                    }
                }
            }
            // Links, devices and directories carry no data even when their size field says otherwise.
            let size = if matches!(kind, EntryKind::File | EntryKind::Skipped(_)) { size } else { 0 };
            return Ok(Some(Entry { name, kind, size }));
        }
    }

    /// Reads an entry's `size` bytes into `buf` (which must be `size` long) and skips the padding.
    pub fn read_data_into(&mut self, buf: &mut [u8], size: u64) -> Result<(), TarError> {
        debug_assert_eq!(buf.len() as u64, size);
        self.r.read_exact(buf).map_err(|e| classify(e, "a member's data"))?;
        self.skip_padding(size)
    }

    /// Reads an entry's `size` bytes into a new vector (without zero-filling it first) and skips the padding.
    pub fn read_data(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let mut v = Vec::with_capacity(size as usize);
        let n = (&mut self.r).take(size).read_to_end(&mut v).map_err(|e| classify(e, "a member's data"))?;
        if (n as u64) < size {
            return Err(TarError::Truncated(format!("stream ends inside a member's data ({n} of {size} bytes)")));
        }
        self.skip_padding(size)?;
        Ok(v)
    }

    /// Skips an entry's `size` bytes and the padding.
    pub fn skip_data(&mut self, size: u64) -> Result<(), TarError> {
        let copied =
            io::copy(&mut (&mut self.r).take(size), &mut io::sink()).map_err(|e| classify(e, "a member's data"))?;
        if copied < size {
            return Err(TarError::Truncated(format!("stream ends inside a member's data ({copied} of {size} bytes)")));
        }
        self.skip_padding(size)
    }

    fn skip_padding(&mut self, size: u64) -> Result<(), TarError> {
        let pad = padding(size);
        if pad > 0 {
            let mut p = [0u8; BLOCK];
            // A stream that ends inside the padding is caught at the next header.
            read_up_to(&mut self.r, &mut p[..pad]).map_err(|e| classify(e, "a member's padding"))?;
        }
        Ok(())
    }
}

fn parse_pax(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Records: "<len> <key>=<value>\n", len counting the whole record.
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(sp) = data[pos..].iter().position(|&b| b == b' ') else { break };
        let Some(len) = std::str::from_utf8(&data[pos..pos + sp]).ok().and_then(|s| s.parse::<usize>().ok()) else {
            break;
        };
        if len == 0 || pos + len > data.len() {
            break;
        }
        let rec = &data[pos + sp + 1..pos + len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        }
        pos += len;
    }
    out
}

/// A tar writer: ustar headers (pax records for names over 100 bytes), fixed mode 0644, owner 0 and mtime 0 so
/// that the same samples always give the same bytes.
pub(crate) struct TarWriter<W: Write> {
    w: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { w, written: 0 }
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn header(name: &[u8], size: u64, typeflag: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name[..n]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        if size < 0o77777777777 {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn write_raw(&mut self, header: &[u8; BLOCK], data: &[u8]) -> io::Result<()> {
        self.w.write_all(header)?;
        self.w.write_all(data)?;
        let pad = padding(data.len() as u64);
        self.w.write_all(&[0u8; BLOCK][..pad])?;
        self.written += (BLOCK + data.len() + pad) as u64;
        Ok(())
    }

    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let name = name.as_bytes();
        if name.len() > 100 {
            let mut rec = Vec::new();
            let body = [b"path=".as_slice(), name, b"\n"].concat();
            // The record length counts its own digits.
            let mut len = body.len() + 2;
            while format!("{len} ").len() + body.len() != len {
                len = format!("{len} ").len() + body.len();
            }
            rec.extend_from_slice(format!("{len} ").as_bytes());
            rec.extend_from_slice(&body);
            let h = Self::header(b"././@PaxHeader", rec.len() as u64, b'x');
            self.write_raw(&h, &rec)?;
        }
        let h = Self::header(name, data.len() as u64, b'0');
        self.write_raw(&h, data)
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        self.written += 2 * BLOCK as u64;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_long_names() {
        let long = format!("{}/x.txt", "d".repeat(150));
        let mut w = TarWriter::new(Vec::new());
        w.append("a.txt", b"hello").unwrap();
        w.append(&long, b"world!").unwrap();
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name, b"a.txt");
        let mut d = vec![0; e.size as usize];
        r.read_data_into(&mut d, e.size).unwrap();
        assert_eq!(d, b"hello");
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        r.skip_data(e.size).unwrap();
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn base256_size() {
        assert_eq!(parse_octal(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"12x\0"), None);
    }
}
