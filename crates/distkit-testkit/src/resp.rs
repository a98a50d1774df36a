//! Just enough RESP2 to send a command and read its reply.

use std::io::BufRead;

use crate::TestkitError;

/// A decoded Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and other status lines.
    Status(String),
    /// `-ERR ...`: the server refused the command.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$n` bulk string (bytes, as the server sent them).
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n` array.
    Array(Vec<Reply>),
}

impl Reply {
    /// The bulk payload as UTF-8 text, if it is a bulk string.
    #[must_use]
    pub fn as_text(&self) -> Option<String> {
        match self {
            Self::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Self::Status(s) => Some(s.clone()),
            _ => None,
        }
    }
}

pub(crate) fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub(crate) fn read(r: &mut impl BufRead, port: u16) -> Result<Reply, TestkitError> {
    let bad = |reason: String| TestkitError::BadReply { port, reason };
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)
        .map_err(|source| TestkitError::Io { port, source })?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "truncated line {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let int = |s: &str| s.parse::<i64>().map_err(|e| bad(format!("{s:?}: {e}")));
    match line[0] {
        b'+' => Ok(Reply::Status(body)),
        b'-' => Ok(Reply::Error(body)),
        b':' => Ok(Reply::Integer(int(&body)?)),
        b'$' => {
            let n = int(&body)?;
            let Ok(n) = usize::try_from(n) else {
                return Ok(Reply::Nil);
            };
            let mut buf = vec![0; n + 2];
            std::io::Read::read_exact(r, &mut buf)
                .map_err(|source| TestkitError::Io { port, source })?;
            buf.truncate(n);
            Ok(Reply::Bulk(buf))
        }
        b'*' => {
            let n = int(&body)?;
            let Ok(n) = usize::try_from(n) else {
                return Ok(Reply::Nil);
            };
            (0..n)
                .map(|_| read(r, port))
                .collect::<Result<_, _>>()
                .map(Reply::Array)
        }
        other => Err(bad(format!("unknown reply type {:?}", other as char))),
    }
}
