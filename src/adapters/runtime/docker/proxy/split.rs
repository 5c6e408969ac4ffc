//! A step's connection as hyper reads it, but for one kind of request: a classic `docker build`,
//! whose context (often hundreds of megabytes) [`relay`](super::relay) sends on in one task
//! instead, without hyper's decoding, re-encoding and hand-offs between tasks for every chunk.
//!
//! [`Split`] follows the connection request by request (each head, and each body to its end)
//! and passes it to hyper until such a build's head comes: there hyper sees the connection end,
//! and once hyper is done with it, the connection, that head and what followed it are the
//! relay's. Following is best-effort: from a request whose framing it cannot follow (a head it
//! cannot parse, an upgrade, a body framed two ways) the rest of the connection passes to
//! hyper, whose route judges every request it sees, builds too. Nothing reaches the engine
//! unjudged either way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use hyper::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::framing::{Body, Chunked};
use super::{api_path, query_value};

/// The longest request head followed (hyper takes longer ones, and judges the connection from
/// there).
const HEAD_LIMIT: usize = 64 * 1024;
/// The most headers a followed request may have.
const HEADERS: usize = 100;
/// Headers about a request's framing and its connection, which a relayed head gets anew.
const CONNECTIONS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
];
/// How much is read at once from the step when its bytes must be looked at.
const READ_SIZE: usize = 64 * 1024;

/// A classic `docker build`'s request, taken off a step's connection.
pub struct Taken {
    pub head: Head,
    /// What the step sent after the head: the start of the body.
    pub rest: BytesMut,
}

/// A request's head, as the relay sends it on.
pub struct Head {
    pub target: Uri,
    /// Its headers but those about its framing and the connection.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
}

/// Where in the step's requests the connection is.
enum Reading {
    /// At a request's head.
    Head,
    /// In a request's body.
    Body(Body),
    /// Past following: everything goes to hyper.
    Through,
    /// A build's head was taken: hyper sees the connection end.
    Taken,
}

/// A step's connection as hyper's IO: reads stop before a classic build's head (see the
/// module's documentation); writes and shutdown go to the step as they are.
pub struct Split {
    stream: Arc<UnixStream>,
    /// Read from the step, not yet hyper's: the first `cleared` bytes are for hyper.
    pending: BytesMut,
    cleared: usize,
    reading: Reading,
    taken: Option<oneshot::Sender<Taken>>,
}

impl Split {
    /// `stream` for hyper, and where a build's head taken from it arrives.
    pub fn new(stream: Arc<UnixStream>) -> (Self, oneshot::Receiver<Taken>) {
        let (taken, receiver) = oneshot::channel();
        let split = Self {
            stream,
            pending: BytesMut::new(),
            cleared: 0,
            reading: Reading::Head,
            taken: Some(taken),
        };
        (split, receiver)
    }

    /// Reads the next head in `pending`, once it is whole; judges where the connection is then.
    fn judge_head(&mut self) -> Judged {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let length = match request.parse(&self.pending) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if self.pending.len() < HEAD_LIMIT => {
                return Judged::Partial;
            }
            _ => return Judged::Through,
        };
        let Some((target, body)) = followed(&request) else {
            return Judged::Through;
        };
        if !is_classic_build(&request, &target) {
            return Judged::Passed { length, body };
        }
        let headers = (request.headers.iter())
            .filter(|header| {
                !CONNECTIONS
                    .iter()
                    .any(|h| header.name.eq_ignore_ascii_case(h))
            })
            .map(|header| (header.name.to_string(), header.value.to_vec()))
            .collect();
        let head = Head {
            target,
            headers,
            body,
        };
        Judged::Build { length, head }
    }

    /// Reads more of the step's bytes into `pending`: how many (0 at its end).
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.pending.reserve(READ_SIZE);
        let pending = &mut self.pending;
        when_ready(&self.stream, cx, false, |s| s.try_read_buf(pending))
    }
}

/// What a head in `pending` made of the connection.
enum Judged {
    /// Not whole yet.
    Partial,
    /// The rest goes to hyper.
    Through,
    /// Hyper's, and its body follows.
    Passed { length: usize, body: Body },
    /// The relay's.
    Build { length: usize, head: Head },
}

/// The target and body of `request` if its framing can be followed: no upgrade, one way of
/// framing its body.
fn followed(request: &httparse::Request) -> Option<(Uri, Body)> {
    let target: Uri = request.path?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = std::str::from_utf8(header.value).ok().map(str::trim);
        match name.as_str() {
            "upgrade" => return None,
            "connection" if value?.to_ascii_lowercase().contains("upgrade") => return None,
            "transfer-encoding" if chunked || !value?.eq_ignore_ascii_case("chunked") => {
                return None;
            }
            "transfer-encoding" => chunked = true,
            "content-length" if length.is_some() => return None,
            "content-length" => length = Some(value?.parse::<u64>().ok()?),
            _ => {}
        }
    }
    let body = match (chunked, length) {
        (true, Some(_)) => return None,
        (true, None) => Body::Chunked(Chunked::default()),
        (false, length) => Body::Length(length.unwrap_or(0)),
    };
    Some((target, body))
}

/// A `docker build` whose context comes in its body: not BuildKit's (`version=2`, whose context
/// comes through its session) nor a remote one.
fn is_classic_build(request: &httparse::Request, target: &Uri) -> bool {
    let query = target.query();
    request.method == Some("POST")
        && api_path(target.path()).trim_matches('/') == "build"
        && query_value(query, "version").as_deref() != Some("2")
        && query_value(query, "remote").is_none_or(|remote| remote.is_empty())
}

/// `attempt` on `stream` once it is ready (to read, or to write), again while it would block.
fn when_ready<T>(
    stream: &UnixStream,
    cx: &mut Context<'_>,
    write: bool,
    mut attempt: impl FnMut(&UnixStream) -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(match write {
            true => stream.poll_write_ready(cx),
            false => stream.poll_read_ready(cx),
        })?;
        match attempt(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for Split {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.cleared > 0 {
                let given = this.cleared.min(buf.remaining());
                buf.put_slice(&this.pending[..given]);
                this.pending.advance(given);
                this.cleared -= given;
                return Poll::Ready(Ok(()));
            }
            // Nothing cleared: judge what is pending, or read more.
            match &mut this.reading {
                Reading::Taken => return Poll::Ready(Ok(())),
                // A body's bytes or the rest of the connection, read straight into hyper's buffer.
                Reading::Through if this.pending.is_empty() => {
                    ready!(when_ready(&this.stream, cx, false, |s| s.try_read_buf(buf)))?;
                    return Poll::Ready(Ok(()));
                }
                Reading::Body(Body::Length(left)) if this.pending.is_empty() && *left > 0 => {
                    let mut limited =
                        BufMut::limit(&mut *buf, (*left).min(usize::MAX as u64) as usize);
                    let read = ready!(
                        when_ready(&this.stream, cx, false, |s| s.try_read_buf(&mut limited))
                    )?;
                    *left -= read as u64;
                    if *left == 0 {
                        this.reading = Reading::Head;
                    }
                    return Poll::Ready(Ok(()));
                }
                Reading::Through => this.cleared = this.pending.len(),
                Reading::Body(body) => match body.feed(&this.pending, |_| {}) {
                    Ok(Some(end)) => {
                        this.cleared = end;
                        this.reading = Reading::Head;
                    }
                    Ok(None) if this.pending.is_empty() => {
                        if ready!(this.poll_more(cx))? == 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Ok(None) => this.cleared = this.pending.len(),
                    Err(_) => this.reading = Reading::Through,
                },
                Reading::Head => match this.judge_head() {
                    Judged::Partial => {
                        if ready!(this.poll_more(cx))? == 0 {
                            // The step's end: hyper sees what it left (if anything) and then
                            // the end.
                            this.reading = Reading::Through;
                        }
                    }
                    Judged::Through => this.reading = Reading::Through,
                    Judged::Passed { length, body } => {
                        this.cleared = length;
                        this.reading = Reading::Body(body);
                    }
                    Judged::Build { length, head } => {
                        this.pending.advance(length);
                        let rest = std::mem::take(&mut this.pending);
                        if let Some(taken) = this.taken.take() {
                            let _ = taken.send(Taken { head, rest });
                        }
                        this.reading = Reading::Taken;
                    }
                },
            }
        }
    }
}

impl AsyncWrite for Split {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        when_ready(&self.stream, cx, true, |s| s.try_write(data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        when_ready(&self.stream, cx, true, |s| s.try_write_vectored(data))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the step's side, unless a build was taken: the relay answers it.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.reading, Reading::Taken) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What hyper reads through a [`Split`] of a connection the step wrote `sent` on, and the
    /// build taken, if one was.
    async fn split(sent: &[u8]) -> (String, Option<Taken>) {
        let (step, endpoint) = UnixStream::pair().unwrap();
        let (mut split, taken) = Split::new(Arc::new(endpoint));
        let mut step = step;
        step.write_all(sent).await.unwrap();
        step.shutdown().await.unwrap();
        let mut read = Vec::new();
        split.read_to_end(&mut read).await.unwrap();
        drop(split);
        (String::from_utf8(read).unwrap(), taken.await.ok())
    }

    const PING: &str = "HEAD /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n";
    const LOAD: &str = "POST /v1.41/images/load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nabc\r\n0\r\n\r\n";
    const CREATE: &str = "POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    const BUILD: &str = "POST /v1.41/build?t=app&dockerfile=Dockerfile HTTP/1.1\r\n\
                         Host: api.moby.localhost\r\nConnection: keep-alive\r\n\
                         Transfer-Encoding: chunked\r\nX-Registry-Config: e30=\r\n\r\n";

    #[tokio::test]
    async fn requests_pass_until_a_builds_head_which_is_taken() {
        let sent = format!("{PING}{LOAD}{CREATE}{BUILD}5\r\nhello\r\n");
        let (read, taken) = split(sent.as_bytes()).await;
        assert_eq!(read, format!("{PING}{LOAD}{CREATE}"));
        let Taken { head, rest } = taken.expect("the build taken");
        assert_eq!(head.target, "/v1.41/build?t=app&dockerfile=Dockerfile");
        assert!(matches!(head.body, Body::Chunked(_)));
        let names: Vec<&str> = head.headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["Host", "X-Registry-Config"]);
        assert_eq!(&rest[..], b"5\r\nhello\r\n");
    }

    #[tokio::test]
    async fn what_cannot_be_followed_passes_whole_to_hyper() {
        let buildkit = BUILD.replace("t=app", "version=2");
        let attach = "POST /containers/x/attach?stream=1 HTTP/1.1\r\nConnection: Upgrade\r\n\
                      Upgrade: tcp\r\n\r\n";
        let twice = "POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\
                     Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for first in [buildkit.as_str(), attach, twice, "NOT HTTP\r\n\r\n"] {
            // After these, a build is hyper's to judge (its route does).
            let sent = format!("{first}{BUILD}0\r\n\r\n");
            let (read, taken) = split(sent.as_bytes()).await;
            assert_eq!(read, sent, "after {first:?}");
            assert!(taken.is_none(), "after {first:?}");
        }
        // A step that ends mid-head or mid-body: hyper sees what came, then the end.
        for sent in [&PING[..10], &LOAD[..LOAD.len() - 4]] {
            assert_eq!(split(sent.as_bytes()).await.0, sent);
        }
    }
}
