//! The node's accept loop: every phase of a connection bounded in time, TLS when configured,
//! and a JSON body on the errors hyper answers by itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use distkit_core::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// How long a client may take to send a request's headers (and to finish a TLS handshake);
/// a slower one is disconnected.
pub(crate) const HEADER_READ: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body.
pub(crate) const BODY_READ: Duration = Duration::from_secs(10);
/// How long requests in flight may go on after shutdown began; then they are cut.
const DRAIN: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` completes, then lets the requests in flight finish
/// for at most [`DRAIN`]. Every phase is bounded: the TLS handshake and the headers within
/// [`HEADER_READ`] (hyper's timer closes a connection that sends them slowly or not at all,
/// so a half-sent request can no longer hold a node open), bodies within [`BODY_READ`] (in
/// the handlers), idle keep-alive connections are closed at once at shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<distkit_core::tls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Taken now, before any handshake: a connection that finishes its handshake
                // after shutdown began is told to close as soon as it is served.
                let watcher = graceful.watcher();
                let router = router.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => connection(stream, router, watcher).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HEADER_READ, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => connection(tls, router, watcher).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                }
                                Err(_) => tracing::debug!("TLS handshake too slow"),
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight {DRAIN:?} after shutdown began; cutting them off");
    }
}

/// Serves one connection's requests with HTTP/1.1.
async fn connection<S>(stream: S, router: Router, watcher: hyper_util::server::graceful::Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .serve_connection(
            TokioIo::new(JsonParseErrors::new(stream)),
            TowerToHyperService::new(router),
        );
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Gives the responses hyper writes by itself, for requests it could not parse (400, 414
/// for an overlong request line, 431 for overlarge headers), the JSON error body every other
/// error of the node has. hyper writes those heads with no body and no content type, then
/// closes the connection; every response of the node's own handlers has a content type or a
/// body, so only hyper's are rewritten.
struct JsonParseErrors<S> {
    inner: S,
    /// A replacement being written, how much of it is out, and how many bytes of hyper's
    /// write it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonParseErrors<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The JSON response that replaces `head` when it is one of hyper's own error responses.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status, kind, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (400, "invalid_input", "malformed HTTP request"),
        b"HTTP/1.1 414 " => (
            414,
            "too_large",
            "the request line is too long (at most 65534 bytes)",
        ),
        b"HTTP/1.1 431 " => (
            431,
            "too_large",
            "the request headers are too large (at most about 400 KiB)",
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let lower = head[..end].to_ascii_lowercase();
    let has = |name: &[u8]| lower.windows(name.len()).any(|w| w == name);
    if end != head.len() || has(b"\r\ncontent-type:") || !has(b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let reason = std::str::from_utf8(&head[13..head.iter().position(|&b| b == b'\r')?]).ok()?;
    let body = ErrorBody::new(kind, message).to_json();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    /// Writes out the pending replacement; `Ready(Ok(n))` with hyper's byte count when done.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, sent, stands_for)) = &mut self.pending else {
                return Poll::Ready(Ok(0));
            };
            if *sent == bytes.len() {
                let n = *stands_for;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *sent += n,
                Err(e) => {
                    self.pending = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match replacement(buf) {
                Some(bytes) => self.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            match replacement(first) {
                Some(bytes) => self.pending = Some((bytes, 0, first.len())),
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_own_error_heads_are_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 27 Nov 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(replacement(hyper_431).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(out.contains("content-type: application/json"));
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["kind"], "too_large");
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        for own in [
            // The node's own responses: a content type, a body, another status, or more
            // bytes than a head.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\nextra",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n",
            b"",
            b"HTTP/1.1 4",
        ] {
            assert!(replacement(own).is_none(), "{:?}", String::from_utf8_lossy(own));
        }
    }
}
