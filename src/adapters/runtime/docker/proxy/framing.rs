//! Where a request body ends and which of its bytes are data (RFC 9112 §6), found as its bytes
//! come: [`split`](super::split) needs the end to find the next request on a step's connection,
//! [`relay`](super::relay) the data to scan a build's context.
//!
//! Chunked framing is read strictly: sizes are hex digits, every line ends in CRLF. What the
//! engine (Go's reader, which is more lenient) reads from bytes this accepts is the same body,
//! ending at the same byte.

use std::ops::Range;

/// The longest chunk-size line (hex size and extensions) or trailer section taken.
const LINE_LIMIT: usize = 4096;

/// A request body by its framing: what is left of it.
#[derive(Debug, Clone)]
pub enum Body {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(Chunked),
}

impl Body {
    /// Reads `input`, the body's next bytes, calling `data` with each range of it that is data.
    /// `Some(end)` once the body ends at `input[end]` (what follows is not the body's).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<Option<usize>, Malformed> {
        match self {
            Body::Chunked(chunked) => chunked.feed(input, data),
            Body::Length(left) => {
                let taken = (*left).min(input.len() as u64) as usize;
                if taken > 0 {
                    data(0..taken);
                }
                *left -= taken as u64;
                Ok((*left == 0).then_some(taken))
            }
        }
    }

    /// How many of the next bytes are data, known without reading them.
    pub fn data_ahead(&self) -> u64 {
        match self {
            Body::Length(left) => *left,
            Body::Chunked(Chunked {
                state: State::Data(left),
            }) => *left,
            Body::Chunked(_) => 0,
        }
    }

    /// Passes over `count` bytes of data, unread (at most [`Body::data_ahead`]).
    pub fn skip_data(&mut self, count: u64) {
        match self {
            Body::Length(left) => *left -= count,
            Body::Chunked(chunked) => {
                if let State::Data(left) = chunked.state {
                    chunked.state = match left - count {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                }
            }
        }
    }

    /// Whether the body has ended.
    pub fn ended(&self) -> bool {
        matches!(
            self,
            Body::Length(0) | Body::Chunked(Chunked { state: State::Done })
        )
    }
}

/// The body does not follow the chunked grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: its size so far, and how many bytes of the line were read.
    Size {
        size: u64,
        read: usize,
    },
    /// In the extensions after a size.
    Extension {
        size: u64,
        read: usize,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section, this many bytes read, the current line empty so far or not.
    Trailer {
        read: usize,
        line_empty: bool,
    },
    TrailerLf {
        read: usize,
        line_empty: bool,
    },
    Done,
}

/// A chunked body's framing, fed its bytes in order.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, read: 0 },
        }
    }
}

impl Chunked {
    /// [`Body::feed`] of a chunked body.
    fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<Option<usize>, Malformed> {
        let mut at = 0;
        while at < input.len() {
            if let State::Data(left) = self.state {
                let taken = left.min((input.len() - at) as u64) as usize;
                data(at..at + taken);
                at += taken;
                self.state = match left - taken as u64 {
                    0 => State::DataCr,
                    left => State::Data(left),
                };
                continue;
            }
            self.state = self.framing(input[at])?;
            at += 1;
            if self.state == State::Done {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// The state after the framing byte `byte`.
    fn framing(&self, byte: u8) -> Result<State, Malformed> {
        let line = |read: usize| match read < LINE_LIMIT {
            true => Ok(read + 1),
            false => Err(Malformed(
                "a chunk-size line or trailer section is too long",
            )),
        };
        Ok(match (self.state, byte) {
            (State::Size { size, read }, _) if (byte as char).is_ascii_hexdigit() => {
                if size >> 60 != 0 {
                    return Err(Malformed("a chunk size is too large"));
                }
                let digit = (byte as char).to_digit(16).unwrap_or_default();
                State::Size {
                    size: size << 4 | u64::from(digit),
                    read: line(read)?,
                }
            }
            (State::Size { read: 0, .. }, _) => return Err(Malformed("a chunk size is missing")),
            (State::Size { size, read } | State::Extension { size, read }, b'\r') => {
                let _ = line(read)?;
                State::SizeLf { size }
            }
            (State::Size { size, read }, b';') | (State::Extension { size, read }, _)
                if byte != b'\n' =>
            {
                State::Extension {
                    size,
                    read: line(read)?,
                }
            }
            (State::SizeLf { size: 0 }, b'\n') => State::Trailer {
                read: 0,
                line_empty: true,
            },
            (State::SizeLf { size }, b'\n') => State::Data(size),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { size: 0, read: 0 },
            (State::Trailer { read, line_empty }, b'\r') => State::TrailerLf {
                read: line(read)?,
                line_empty,
            },
            (State::Trailer { read, .. }, _) if byte != b'\n' => State::Trailer {
                read: line(read)?,
                line_empty: false,
            },
            (
                State::TrailerLf {
                    line_empty: true, ..
                },
                b'\n',
            ) => State::Done,
            (State::TrailerLf { read, .. }, b'\n') => State::Trailer {
                read: line(read)?,
                line_empty: true,
            },
            (State::Done, _) => return Err(Malformed("bytes after the body's end")),
            _ => return Err(Malformed("a chunk's framing is not CRLF-terminated")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data and end of `body` fed in pieces of `piece` bytes.
    fn read(body: &[u8], piece: usize) -> Result<(Vec<u8>, Option<usize>), Malformed> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        for (n, part) in body.chunks(piece).enumerate() {
            let ended = chunked.feed(part, |range| data.extend_from_slice(&part[range]))?;
            if let Some(end) = ended {
                return Ok((data, Some(n * piece + end)));
            }
        }
        Ok((data, None))
    }

    #[test]
    fn data_and_the_end_are_found_whatever_the_pieces() {
        let body = b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nGET /next";
        for piece in [1, 2, 3, 7, 64, body.len()] {
            let (data, end) = read(body, piece).unwrap();
            assert_eq!(
                data, b"helloabcdefghijklmnopqrstuvwxyz",
                "pieces of {piece}"
            );
            assert_eq!(
                end,
                Some(body.len() - b"GET /next".len()),
                "pieces of {piece}"
            );
        }
        assert_eq!(read(b"0\r\n\r\n", 1).unwrap(), (Vec::new(), Some(5)));
        assert_eq!(read(b"A\r\n0123", 4).unwrap(), (b"0123".to_vec(), None));
    }

    #[test]
    fn a_length_ends_the_body_after_that_many_bytes() {
        let mut body = Body::Length(5);
        let mut data = Vec::new();
        assert_eq!(body.feed(b"abc", |range| data.push(range)), Ok(None));
        assert_eq!(body.feed(b"deGET", |range| data.push(range)), Ok(Some(2)));
        assert_eq!(data, [0..3, 0..2]);
        assert_eq!(
            Body::Length(0).feed(b"GET", |_| panic!("no data")),
            Ok(Some(0))
        );
    }

    #[test]
    fn what_strays_from_the_grammar_is_refused() {
        for body in [
            &b"\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"g\r\n",
            b"10000000000000000\r\n",
            b"0\r\nX-A: 1\n\r\n",
        ] {
            assert!(read(body, 1).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let long = [b"1;".to_vec(), vec![b'x'; LINE_LIMIT]].concat();
        assert!(read(&long, 100).is_err());
    }
}
