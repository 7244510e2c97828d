//! SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks):
//! the packets burrow sends, and the replies it reads. Names, paths and handles are bytes,
//! exactly as the server sent them; nothing is decoded as text.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) const INIT: u8 = 1;
pub(crate) const VERSION: u8 = 2;
pub(crate) const OPEN: u8 = 3;
pub(crate) const CLOSE: u8 = 4;
pub(crate) const READ: u8 = 5;
pub(crate) const LSTAT: u8 = 7;
pub(crate) const FSTAT: u8 = 8;
pub(crate) const OPENDIR: u8 = 11;
pub(crate) const READDIR: u8 = 12;
pub(crate) const READLINK: u8 = 19;
pub(crate) const EXTENDED: u8 = 200;

const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED_REPLY: u8 = 201;

/// `SSH_FXF_READ`: the only way burrow opens a file.
pub(crate) const OPEN_READ: u32 = 0x1;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Status codes of SFTP v3.
pub(crate) const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;
const FX_OP_UNSUPPORTED: u32 = 8;

/// The largest packet burrow accepts from a server. OpenSSH's sftp-server sends at most
/// 256 KiB; anything far above that is a broken or hostile stream.
pub(crate) const MAX_PACKET: usize = 4 << 20;

/// File attributes as SFTP v3 carries them; a field the server left out is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Type and permission bits (`st_mode`).
    pub permissions: Option<u32>,
    pub atime: Option<u32>,
    pub mtime: Option<u32>,
}

/// One name of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Bytes,
    pub attrs: Attrs,
}

/// A server's answer to one request.
#[derive(Debug)]
pub(crate) enum Reply {
    Status { code: u32, message: String },
    Handle(Bytes),
    Data(Bytes),
    Name(Vec<DirEntry>),
    Attrs(Attrs),
    Extended(Bytes),
}

/// A request being encoded: `u32 length, u8 type, u32 id, fields…` appended to a buffer that
/// may already hold other requests (so that several go out in one write).
pub(crate) struct Request<'a> {
    buf: &'a mut BytesMut,
    start: usize,
}

impl<'a> Request<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut, kind: u8, id: u32) -> Self {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u8(kind);
        buf.put_u32(id);
        Request { buf, start }
    }

    pub(crate) fn u32(self, v: u32) -> Self {
        self.buf.put_u32(v);
        self
    }

    pub(crate) fn u64(self, v: u64) -> Self {
        self.buf.put_u64(v);
        self
    }

    pub(crate) fn string(self, v: &[u8]) -> Self {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
        self
    }

    /// Writes the length in front.
    pub(crate) fn finish(self) {
        let len = (self.buf.len() - self.start - 4) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// `SSH_FXP_INIT` for version 3 (it has no request id).
pub(crate) fn init() -> BytesMut {
    let mut b = BytesMut::with_capacity(9);
    b.put_u32(5);
    b.put_u8(INIT);
    b.put_u32(3);
    b
}

/// A reader over one packet's body.
pub(crate) struct Cursor {
    data: Bytes,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed SFTP reply: {what}"),
    )
}

impl Cursor {
    pub(crate) fn new(data: Bytes) -> Self {
        Cursor { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Fails unless `n` more bytes are there.
    fn need(&self, n: usize) -> io::Result<()> {
        if self.data.remaining() < n {
            return Err(malformed("truncated"));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        self.need(1)?;
        Ok(self.data.get_u8())
    }

    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        self.need(4)?;
        Ok(self.data.get_u32())
    }

    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        self.need(8)?;
        Ok(self.data.get_u64())
    }

    /// A length-prefixed string, as a slice of the packet (no copy).
    pub(crate) fn string(&mut self) -> io::Result<Bytes> {
        let n = self.u32()? as usize;
        if n > self.data.len() {
            return Err(malformed("a string runs past the packet"));
        }
        Ok(self.data.split_to(n))
    }

    fn attrs(&mut self) -> io::Result<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid = Some(self.u32()?);
            a.gid = Some(self.u32()?);
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.atime = Some(self.u32()?);
            a.mtime = Some(self.u32()?);
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.string()?;
                self.string()?;
            }
        }
        Ok(a)
    }
}

/// Splits a reply packet (type byte onwards) into its request id and content.
pub(crate) fn parse_reply(packet: Bytes) -> io::Result<(u32, Reply)> {
    let mut c = Cursor::new(packet);
    let kind = c.u8()?;
    let id = c.u32()?;
    let reply = match kind {
        STATUS => {
            let code = c.u32()?;
            // Version 3 servers may leave out the message and language tag.
            let message = if c.is_empty() {
                String::new()
            } else {
                String::from_utf8_lossy(&c.string()?).into_owned()
            };
            Reply::Status { code, message }
        }
        HANDLE => Reply::Handle(c.string()?),
        DATA => Reply::Data(c.string()?),
        NAME => {
            let n = c.u32()? as usize;
            // Each name takes at least 12 bytes; a count beyond that is a lie.
            let mut names = Vec::with_capacity(n.min(c.data.len() / 12));
            for _ in 0..n {
                let name = c.string()?;
                c.string()?; // the `ls -l` line
                let attrs = c.attrs()?;
                names.push(DirEntry { name, attrs });
            }
            Reply::Name(names)
        }
        ATTRS => Reply::Attrs(c.attrs()?),
        EXTENDED_REPLY => Reply::Extended(c.data.clone()),
        other => return Err(malformed(&format!("unknown packet type {other}"))),
    };
    Ok((id, reply))
}

/// A status reply as an error, keeping "not found" and "permission denied" apart.
pub(crate) fn status_error(code: u32, message: &str) -> io::Error {
    let kind = match code {
        FX_NO_SUCH_FILE => io::ErrorKind::NotFound,
        FX_PERMISSION_DENIED => io::ErrorKind::PermissionDenied,
        FX_OP_UNSUPPORTED => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    let text = match (code, message.is_empty()) {
        (_, false) => message.to_owned(),
        (FX_EOF, true) => "end of file".to_owned(),
        (FX_NO_SUCH_FILE, true) => "no such file".to_owned(),
        (FX_PERMISSION_DENIED, true) => "permission denied".to_owned(),
        (c, true) => format!("failure (status {c})"),
    };
    io::Error::new(kind, text)
}

/// A reply that is not what the request calls for.
pub(crate) fn unexpected(what: &str, got: &Reply) -> io::Error {
    match got {
        Reply::Status { code, message } => status_error(*code, message),
        other => malformed(&format!("{what} was answered with {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, body: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u32(id);
        b.put_slice(body);
        b.freeze()
    }

    #[test]
    fn requests_carry_their_length_and_fields() {
        let mut buf = BytesMut::new();
        Request::new(&mut buf, READ, 7)
            .string(b"\x00\x00\x00\x80")
            .u64(1 << 33)
            .u32(4096)
            .finish();
        Request::new(&mut buf, CLOSE, 8).string(b"h").finish();
        let mut c = Cursor::new(buf.freeze());
        assert_eq!(c.u32().unwrap(), 1 + 4 + 8 + 8 + 4);
        assert_eq!(c.u8().unwrap(), READ);
        assert_eq!(c.u32().unwrap(), 7);
        // A handle is bytes: OpenSSH's slot 128 is not valid UTF-8 and must survive.
        assert_eq!(&c.string().unwrap()[..], b"\x00\x00\x00\x80");
        assert_eq!(c.u64().unwrap(), 1 << 33);
        assert_eq!(c.u32().unwrap(), 4096);
        assert_eq!(c.u32().unwrap(), 1 + 4 + 4 + 1);
    }

    #[test]
    fn names_and_attributes_are_read_as_sent() {
        let mut body = BytesMut::new();
        body.put_u32(2);
        for (name, flags) in [(&b"bad\xff"[..], 0xf | ATTR_EXTENDED), (&b"x"[..], 0)] {
            body.put_u32(name.len() as u32);
            body.put_slice(name);
            body.put_u32(3);
            body.put_slice(b"ls!");
            body.put_u32(flags);
            if flags != 0 {
                body.put_u64(5);
                body.put_u32(1000);
                body.put_u32(100);
                body.put_u32(0o100644);
                body.put_u32(11);
                body.put_u32(22);
                body.put_u32(1);
                for s in ["k", "v"] {
                    body.put_u32(1);
                    body.put_slice(s.as_bytes());
                }
            }
        }
        let (id, reply) = parse_reply(packet(NAME, 3, &body)).unwrap();
        assert_eq!(id, 3);
        let Reply::Name(names) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(&names[0].name[..], b"bad\xff");
        assert_eq!(
            names[0].attrs,
            Attrs {
                size: Some(5),
                uid: Some(1000),
                gid: Some(100),
                permissions: Some(0o100644),
                atime: Some(11),
                mtime: Some(22),
            }
        );
        assert_eq!(names[1].attrs, Attrs::default());
    }

    #[test]
    fn truncated_and_lying_replies_are_errors_not_panics() {
        let mut body = BytesMut::new();
        body.put_u32(u32::MAX); // names claimed
        assert!(parse_reply(packet(NAME, 1, &body)).is_err());
        let mut body = BytesMut::new();
        body.put_u32(100); // a string longer than the packet
        body.put_slice(b"abc");
        assert!(parse_reply(packet(DATA, 1, &body)).is_err());
        assert!(parse_reply(Bytes::from_static(&[HANDLE, 0, 0])).is_err());
        assert!(parse_reply(packet(99, 1, b"")).is_err());
    }

    #[test]
    fn a_status_without_message_still_says_what_it_is() {
        let mut body = BytesMut::new();
        body.put_u32(FX_NO_SUCH_FILE);
        let (_, r) = parse_reply(packet(STATUS, 1, &body)).unwrap();
        let e = unexpected("LSTAT", &r);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no such file");
    }
}
