//! Step output as lines: the engine delivers frames that may split or join lines, so each stream
//! is assembled into whole lines, and every line is masked before anyone sees it.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Secret values shorter than this are not masked: masking `ab` would garble every log line that
/// happens to contain those letters, and would tell an onlooker little about the secret anyway.
pub const MIN_MASKED_LEN: usize = 4;
pub const MASK: &str = "[MASKED]";

/// The longest line kept whole: output without newlines (a progress bar, a binary) is cut into
/// lines of at most this many bytes rather than held in memory.
pub const MAX_LINE: usize = 256 * 1024;
/// Ends each piece of a line cut at [`MAX_LINE`] but its last, so a reader knows the line goes on.
pub const CUT_MARK: &str = " [builder: line cut at 256 KiB, it goes on in the next line]";

/// Which of a step's streams a line came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Joins byte frames into lines (without their `\n` or `\r\n`), masked. Invalid UTF-8 is
/// replaced; a line longer than [`MAX_LINE`] is cut into pieces, each but the last ending in
/// [`CUT_MARK`], and never inside a secret: each piece is masked on its own, so a cut moves to
/// just before a secret that would straddle it.
#[derive(Debug, Default)]
pub struct LineAssembler {
    partial: Vec<u8>,
    masker: Masker,
}

impl LineAssembler {
    /// An assembler whose lines `masker` masks.
    pub fn new(masker: Masker) -> Self {
        LineAssembler {
            partial: Vec::new(),
            masker,
        }
    }

    /// The lines completed by `bytes`.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        // memchr: the search for newlines is the one pass over every byte of output.
        while let Some(newline) = memchr::memchr(b'\n', bytes) {
            let (head, rest) = bytes.split_at(newline);
            if self.partial.is_empty() {
                self.complete(head, &mut lines);
            } else {
                self.partial.extend_from_slice(head);
                let partial = std::mem::take(&mut self.partial);
                self.complete(&partial, &mut lines);
            }
            bytes = &rest[1..];
        }
        self.partial.extend_from_slice(bytes);
        // Only what goes past the limit is cut off: a line of exactly MAX_LINE bytes whose
        // newline comes in the next frame stays whole. A cut waits until enough follows it to
        // tell whether a secret straddles it.
        let lookahead = self.masker.longest.saturating_sub(1);
        let mut start = 0;
        while self.partial.len() - start > MAX_LINE + lookahead {
            let cut = start + self.cut_point(&self.partial[start..]);
            lines.push(self.piece(&self.partial[start..cut]));
            start = cut;
        }
        self.partial.drain(..start);
        lines
    }

    /// The last line when the output did not end with a newline, in pieces if it is too long.
    pub fn finish(self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.partial.is_empty() {
            self.complete(&self.partial, &mut lines);
        }
        lines
    }

    /// A whole line, cut into pieces if it is too long, masked.
    fn complete(&self, mut bytes: &[u8], lines: &mut Vec<String>) {
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        while bytes.len() > MAX_LINE {
            let cut = self.cut_point(bytes);
            lines.push(self.piece(&bytes[..cut]));
            bytes = &bytes[cut..];
        }
        lines.push(self.masker.mask(text(bytes, 0)));
    }

    /// Where to cut `bytes`, longer than [`MAX_LINE`]: at the limit, or just before it if a
    /// UTF-8 character would be split there (the pieces stay readable), unless the bytes are not
    /// text; and before a secret that would straddle the cut, unless the secret is longer than a
    /// piece.
    fn cut_point(&self, bytes: &[u8]) -> usize {
        let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
        let cut = (MAX_LINE - 3..=MAX_LINE)
            .rev()
            .find(|&i| !is_continuation(bytes[i]))
            .unwrap_or(MAX_LINE);
        match self.masker.straddling(bytes, cut) {
            Some(secret) if secret > 0 => secret,
            _ => cut,
        }
    }

    fn piece(&self, bytes: &[u8]) -> String {
        let mut piece = self.masker.mask(text(bytes, CUT_MARK.len()));
        piece.push_str(CUT_MARK);
        piece
    }
}

/// `bytes` as text, invalid UTF-8 replaced, with room for `extra` more bytes (a piece's
/// [`CUT_MARK`], pushed without copying the piece again). Valid text, nearly all output, is
/// checked by `str::from_utf8`, whose ASCII fast path is ~6x `from_utf8_lossy`'s scan.
fn text(bytes: &[u8], extra: usize) -> String {
    let mut text = String::with_capacity(bytes.len() + extra);
    match std::str::from_utf8(bytes) {
        Ok(valid) => text.push_str(valid),
        Err(_) => text.push_str(&String::from_utf8_lossy(bytes)),
    }
    text
}

/// How many bytes of output a build's log keeps unless told otherwise: 100 MiB, which real
/// builds' logs stay far below, and which still bounds what one build can put in the store.
pub const DEFAULT_LOG_LIMIT: u64 = 100 * 1024 * 1024;

/// What a build's log keeps of its steps' lines: all of them until they would take it past its
/// limit (counted as printed, each line with its newline); then one line that says so, and
/// nothing after it.
#[derive(Debug, Clone)]
pub struct LogLimit {
    limit: u64,
    kept: u64,
    reached: bool,
}

/// What becomes of one line under a [`LogLimit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Keep,
    /// The line would go past the limit: in its place, this line says the log ends here.
    Cut(String),
    /// The limit was reached before.
    Drop,
}

impl LogLimit {
    pub fn new(limit: u64) -> Self {
        LogLimit {
            limit,
            kept: 0,
            reached: false,
        }
    }

    /// Whether the limit was reached: every further line is dropped.
    pub fn reached(&self) -> bool {
        self.reached
    }

    /// What becomes of `line`, counted in if it is kept.
    pub fn admit(&mut self, line: &str) -> Admit {
        if self.reached {
            return Admit::Drop;
        }
        let cost = line.len() as u64 + 1;
        if self.kept + cost <= self.limit {
            self.kept += cost;
            return Admit::Keep;
        }
        self.reached = true;
        Admit::Cut(format!(
            "[builder] log truncated at {} bytes: the build's log limit (`--log-limit`, \
             `logLimit` in serve.yaml) was reached; the steps run on, but their further output \
             is not kept",
            self.limit
        ))
    }
}

/// Where `base64` (coreutils) wraps the lines it prints.
const BASE64_COLUMNS: usize = 76;
/// The shortest line of a wrapped base64 form that is masked.
const MIN_WRAPPED_LEN: usize = 16;

/// Replaces secret values, and their base64 forms, with [`MASK`].
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    /// The length of the longest form masked, in bytes.
    longest: usize,
}

impl Masker {
    /// Fails only when the secrets are too large to search for, in which case nothing may run.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets {
            // `echo "$S" | base64` encodes a trailing newline too, and `base64` wraps its output
            // at 76 columns: each line of the wrapped form is masked on its own, but for a last
            // line too short to tell from other base64 (`Cg==`), which would garble logs.
            let encoded = [
                STANDARD.encode(secret),
                STANDARD.encode(format!("{secret}\n")),
            ];
            let wrapped = encoded
                .iter()
                .filter(|form| form.len() > BASE64_COLUMNS)
                .flat_map(|form| form.as_bytes().chunks(BASE64_COLUMNS))
                .filter(|line| line.len() >= MIN_WRAPPED_LEN)
                .map(|line| String::from_utf8_lossy(line).into_owned());
            let plain = secret.trim_end_matches('\n').to_string();
            for form in [plain].into_iter().chain(encoded.clone()).chain(wrapped) {
                if form.len() >= MIN_MASKED_LEN && !patterns.contains(&form) {
                    patterns.push(form);
                }
            }
            // A multi-line secret is printed one line at a time.
            for part in secret.lines().filter(|l| l.len() >= MIN_MASKED_LEN) {
                if !patterns.iter().any(|p| p == part) {
                    patterns.push(part.to_string());
                }
            }
        }
        if patterns.is_empty() {
            return Ok(Self::default());
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| format!("cannot prepare secret masking: {e}"))?;
        Ok(Self {
            matcher: Some(matcher),
            longest: patterns.iter().map(String::len).max().unwrap_or(0),
        })
    }

    /// Where a secret that straddles `cut` in `bytes` starts: one that begins before `cut` and
    /// ends after it. `bytes` holds at least the longest secret's length after `cut`, when there
    /// is that much.
    fn straddling(&self, bytes: &[u8], cut: usize) -> Option<usize> {
        let matcher = self.matcher.as_ref()?;
        let from = cut.saturating_sub(self.longest);
        let to = bytes.len().min(cut + self.longest);
        matcher
            .find_iter(&bytes[from..to])
            .map(|found| (from + found.start(), from + found.end()))
            .find(|&(start, end)| start < cut && cut < end)
            .map(|(start, _)| start)
    }

    /// The line with every secret in it masked; the line itself when it holds none.
    pub fn mask(&self, line: String) -> String {
        match &self.matcher {
            Some(matcher) if matcher.is_match(&line) => {
                matcher.replace_all(&line, &vec![MASK; matcher.patterns_len()])
            }
            _ => line,
        }
    }
}

/// The encoding of a chunk: a version byte, then the lines compressed as one zstd frame, each
/// line its step (LEB128), its stream (one byte), its length (LEB128) and its UTF-8 bytes. A log
/// is stored as such chunks of consecutive lines, so that it costs about its compressed size; the
/// store keeps each chunk's first line number and line count beside it, to page without
/// decompressing what is skipped.
const CHUNK_VERSION: u8 = 1;
/// zstd's default level: a chunk of `seq` output compresses ~20× at a few hundred MB/s.
const CHUNK_LEVEL: i32 = 3;

/// Why a stored chunk could not be read back.
#[derive(Debug)]
pub enum ChunkError {
    /// Written by a newer builder, in an encoding this one does not know.
    Version(u8),
    /// The compressed bytes are damaged (or, writing, zstd had no memory).
    Compression(std::io::Error),
    /// The lines end in the middle of one.
    Truncated,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::Version(v) => write!(f, "a log chunk of unknown version {v}"),
            ChunkError::Compression(e) => write!(f, "a log chunk's compression: {e}"),
            ChunkError::Truncated => f.write_str("a log chunk ends in the middle of a line"),
        }
    }
}

impl std::error::Error for ChunkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChunkError::Compression(e) => Some(e),
            ChunkError::Version(_) | ChunkError::Truncated => None,
        }
    }
}

/// Lines (step, stream, text) as one compressed chunk. Fails only if zstd cannot get the
/// memory it needs.
pub fn encode_chunk<'a>(
    lines: impl IntoIterator<Item = (usize, LogStream, &'a str)>,
) -> Result<Vec<u8>, ChunkError> {
    let mut raw = Vec::new();
    for (step, stream, text) in lines {
        put_varint(&mut raw, step as u64);
        raw.push(match stream {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        });
        put_varint(&mut raw, text.len() as u64);
        raw.extend_from_slice(text.as_bytes());
    }
    // In one call, so that zstd sizes its context to the chunk rather than to the level's window.
    let compressed = zstd::bulk::compress(&raw, CHUNK_LEVEL).map_err(ChunkError::Compression)?;
    let mut chunk = Vec::with_capacity(1 + compressed.len());
    chunk.push(CHUNK_VERSION);
    chunk.extend_from_slice(&compressed);
    Ok(chunk)
}

/// The lines of a chunk that [`encode_chunk`] made, in order.
pub fn decode_chunk(chunk: &[u8]) -> Result<Vec<(usize, LogStream, String)>, ChunkError> {
    let (&version, compressed) = chunk.split_first().ok_or(ChunkError::Truncated)?;
    if version != CHUNK_VERSION {
        return Err(ChunkError::Version(version));
    }
    let raw = zstd::stream::decode_all(compressed).map_err(ChunkError::Compression)?;
    let mut rest = raw.as_slice();
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let step = take_varint(&mut rest)? as usize;
        let (&stream, after) = rest.split_first().ok_or(ChunkError::Truncated)?;
        rest = after;
        let len = take_varint(&mut rest)? as usize;
        if rest.len() < len {
            return Err(ChunkError::Truncated);
        }
        let (text, after) = rest.split_at(len);
        rest = after;
        let stream = if stream == 1 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        // Written from `&str`: lossy only for a chunk damaged under its checksum-less frame.
        lines.push((step, stream, String::from_utf8_lossy(text).into_owned()));
    }
    Ok(lines)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, ChunkError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(ChunkError::Truncated)?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(ChunkError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_lines_across_frames() {
        let mut assembler = LineAssembler::default();
        assert_eq!(assembler.push(b"he"), Vec::<String>::new());
        assert_eq!(assembler.push(b"llo\r\nwor"), ["hello"]);
        assert_eq!(assembler.push(b"ld\n\nlast"), ["world", ""]);
        assert_eq!(assembler.finish(), ["last"]);
        assert!(LineAssembler::default().finish().is_empty());
    }

    #[test]
    fn cuts_overlong_lines_with_a_mark() {
        let cut = |pieces: &[String]| -> Vec<(usize, bool)> {
            pieces
                .iter()
                .map(|p| match p.strip_suffix(CUT_MARK) {
                    Some(piece) => (piece.len(), true),
                    None => (p.len(), false),
                })
                .collect()
        };
        // Exactly at the limit, even across frames: whole.
        let mut exact = LineAssembler::default();
        assert!(exact.push(&vec![b'x'; MAX_LINE]).is_empty());
        assert_eq!(cut(&exact.push(b"\n")), [(MAX_LINE, false)]);
        // Past it, without a newline yet: cut as it comes, the rest kept for later.
        let mut long = LineAssembler::default();
        assert!(long.push(&vec![b'x'; MAX_LINE - 1]).is_empty());
        assert_eq!(cut(&long.push(b"yz")), [(MAX_LINE, true)]);
        assert_eq!(long.finish(), ["z"]);
        // A long line within one frame.
        let mut frame = vec![b'a'; 2 * MAX_LINE + 5];
        frame.extend_from_slice(b"\r\nnext\n");
        let lines = LineAssembler::default().push(&frame);
        assert_eq!(
            cut(&lines),
            [(MAX_LINE, true), (MAX_LINE, true), (5, false), (4, false)]
        );
        // Never inside a character.
        let mut text = vec![b'a'; MAX_LINE - 1];
        text.extend_from_slice("é and more\n".as_bytes());
        let lines = LineAssembler::default().push(&text);
        assert_eq!(cut(&lines), [(MAX_LINE - 1, true), (11, false)]);
        assert_eq!(lines[1], "é and more");
    }

    #[test]
    fn invalid_utf8_is_replaced_in_lines_and_pieces() {
        let mut assembler = LineAssembler::new(Masker::new(["s\u{e9}cret"]).unwrap());
        assert_eq!(
            assembler.push(b"a\xffb s\xc3\xa9cret\n"),
            ["a\u{fffd}b [MASKED]"]
        );
        let mut long = vec![0xfe; MAX_LINE];
        long.extend_from_slice(b"xy\n");
        let pieces = assembler.push(&long);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0], "\u{fffd}".repeat(MAX_LINE) + CUT_MARK);
        assert_eq!(pieces[1], "xy");
    }

    #[test]
    fn masks_secrets_split_across_frames() {
        let masker = Masker::new(["hunter22"]).unwrap();
        let mut assembler = LineAssembler::new(masker);
        let mut lines = assembler.push(b"one\npw=hun");
        lines.extend(assembler.push(b"ter22 two\nthree hunt"));
        lines.extend(assembler.push(b"er22"));
        lines.extend(assembler.finish());
        assert_eq!(lines, ["one", "pw=[MASKED] two", "three [MASKED]"]);
    }

    /// A secret that a cut at 256 KiB would split is moved whole into the next piece, whether
    /// the line comes in one frame or in many, ends with a newline or not.
    #[test]
    fn cuts_never_split_a_secret() {
        let secret = "hunter22-but-longer";
        let masker = Masker::new([secret]).unwrap();
        for before in [MAX_LINE - 5, MAX_LINE - secret.len() + 1, MAX_LINE - 1] {
            let mut line = "x".repeat(before).into_bytes();
            line.extend_from_slice(secret.as_bytes());
            line.extend_from_slice(b" and after");
            let masked = |frames: &mut dyn Iterator<Item = &[u8]>, newline: bool| {
                let mut assembler = LineAssembler::new(masker.clone());
                let mut lines: Vec<String> = frames.flat_map(|f| assembler.push(f)).collect();
                if newline {
                    lines.extend(assembler.push(b"\n"));
                }
                lines.extend(assembler.finish());
                lines
            };
            for newline in [true, false] {
                for frame in [line.len(), 16 * 1024, 7] {
                    let lines = masked(&mut line.chunks(frame), newline);
                    assert_eq!(lines.len(), 2, "{before} {frame}");
                    assert_eq!(lines[0], format!("{}{CUT_MARK}", "x".repeat(before)));
                    assert_eq!(lines[1], "[MASKED] and after");
                }
            }
        }
        // Without secrets, the cut stays at the limit.
        let mut plain = LineAssembler::default();
        let pieces = plain.push(&[b'y'; MAX_LINE + 1]);
        assert_eq!(pieces.len(), 1);
        assert_eq!(plain.finish(), ["y"]);
    }

    #[test]
    fn a_log_keeps_lines_up_to_its_limit_then_says_where_it_was_cut() {
        let mut limit = LogLimit::new(10);
        assert_eq!(limit.admit("1234"), Admit::Keep);
        assert_eq!(limit.admit("5678"), Admit::Keep);
        assert!(!limit.reached());
        let Admit::Cut(notice) = limit.admit("9") else {
            panic!("not cut")
        };
        assert!(notice.contains("truncated at 10 bytes"), "{notice}");
        assert!(notice.contains("--log-limit"), "{notice}");
        assert!(limit.reached());
        assert_eq!(limit.admit(""), Admit::Drop);
        // Exactly at the limit, newline included: kept.
        assert_eq!(LogLimit::new(5).admit("1234"), Admit::Keep);
    }

    #[test]
    fn chunks_read_back_their_lines() {
        let lines = [
            (0, LogStream::Stdout, String::new()),
            (
                1,
                LogStream::Stderr,
                "é \u{1b}[32mgreen\u{1b}[0m".to_string(),
            ),
            (300, LogStream::Stdout, "x".repeat(MAX_LINE)),
        ];
        let chunk = encode_chunk(lines.iter().map(|(s, o, t)| (*s, *o, t.as_str()))).unwrap();
        assert_eq!(decode_chunk(&chunk).unwrap(), lines);
        // Compressed: a long repetitive line costs next to nothing.
        assert!(chunk.len() < 1024, "{}", chunk.len());
        assert!(decode_chunk(&encode_chunk([]).unwrap()).unwrap().is_empty());

        assert!(matches!(
            decode_chunk(&[9, 1, 2]),
            Err(ChunkError::Version(9))
        ));
        assert!(matches!(decode_chunk(&[]), Err(ChunkError::Truncated)));
        assert!(matches!(
            decode_chunk(&chunk[..chunk.len() - 3]),
            Err(ChunkError::Compression(_))
        ));
        let cut_short = encode_chunk([(0, LogStream::Stdout, "abc")]).unwrap();
        let mut raw = zstd::stream::decode_all(&cut_short[1..]).unwrap();
        raw.pop();
        let mut damaged = vec![CHUNK_VERSION];
        damaged.extend(zstd::stream::encode_all(raw.as_slice(), 0).unwrap());
        assert!(matches!(decode_chunk(&damaged), Err(ChunkError::Truncated)));
    }

    #[test]
    fn masks_values_and_their_base64() {
        let masker = Masker::new(["hunter22", "ab", "line one\nline two"]).unwrap();
        let mask = |masker: &Masker, line: &str| masker.mask(line.to_string());
        assert_eq!(mask(&masker, "pw=hunter22!"), "pw=[MASKED]!");
        assert_eq!(mask(&masker, &STANDARD.encode("hunter22")), MASK);
        assert_eq!(mask(&masker, &STANDARD.encode("hunter22\n")), MASK);
        assert_eq!(mask(&masker, "ab stays"), "ab stays");
        assert_eq!(mask(&masker, "> line two"), "> [MASKED]");
        assert_eq!(mask(&Masker::default(), "plain"), "plain");
    }

    #[test]
    fn masks_base64_wrapped_at_76_columns() {
        // What `echo "$S" | base64` prints for a 100-byte secret: a 76-column line, then the rest.
        let secret = "s3cr3t-".repeat(15);
        let encoded = STANDARD.encode(format!("{secret}\n"));
        let masker = Masker::new([secret.as_str()]).unwrap();
        let (first, rest) = encoded.split_at(76);
        assert_eq!(masker.mask(first.to_string()), MASK);
        assert_eq!(masker.mask(rest.to_string()), MASK);
        let printf = STANDARD.encode(&secret);
        assert_eq!(masker.mask(printf[..76].to_string()), MASK);
        assert_eq!(masker.mask(printf[76..].to_string()), MASK);
        // 58 bytes and a newline: the wrapped form's last line is four characters, left alone.
        let short = "k".repeat(58);
        let masker = Masker::new([short.as_str()]).unwrap();
        let encoded = STANDARD.encode(format!("{short}\n"));
        let tail = &encoded[76..];
        assert_eq!(tail.len(), 4);
        assert_eq!(masker.mask(encoded[..76].to_string()), MASK);
        assert_eq!(masker.mask(tail.to_string()), tail);
    }
}
