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
/// lines of this many bytes rather than held in memory.
pub const MAX_LINE: usize = 256 * 1024;

/// Joins byte frames into lines (without their `\n` or `\r\n`). Invalid UTF-8 is replaced.
#[derive(Debug, Default)]
pub struct LineAssembler {
    partial: Vec<u8>,
}

impl LineAssembler {
    /// The lines completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            if self.partial.len() < MAX_LINE {
                return Vec::new();
            }
            return vec![line(&std::mem::take(&mut self.partial))];
        };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete[..last_newline]
            .split(|&b| b == b'\n')
            .map(line)
            .collect()
    }

    /// The last line when the output did not end with a newline.
    pub fn finish(self) -> Option<String> {
        (!self.partial.is_empty()).then(|| line(&self.partial))
    }
}

fn line(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where `base64` (coreutils) wraps the lines it prints.
const BASE64_COLUMNS: usize = 76;
/// The shortest line of a wrapped base64 form that is masked.
const MIN_WRAPPED_LEN: usize = 16;

/// Replaces secret values, and their base64 forms, with [`MASK`].
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
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
        })
    }

    pub fn mask(&self, line: &str) -> String {
        match &self.matcher {
            Some(matcher) => matcher.replace_all(line, &vec![MASK; matcher.patterns_len()]),
            None => line.to_string(),
        }
    }
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
        assert_eq!(assembler.finish(), Some("last".to_string()));
        assert_eq!(LineAssembler::default().finish(), None);
        let mut long = LineAssembler::default();
        assert_eq!(long.push(&vec![b'x'; MAX_LINE - 1]), Vec::<String>::new());
        assert_eq!(long.push(b"yz").len(), 1);
        assert_eq!(long.finish(), None);
    }

    #[test]
    fn masks_values_and_their_base64() {
        let masker = Masker::new(["hunter22", "ab", "line one\nline two"]).unwrap();
        assert_eq!(masker.mask("pw=hunter22!"), "pw=[MASKED]!");
        assert_eq!(masker.mask(&STANDARD.encode("hunter22")), MASK);
        assert_eq!(masker.mask(&STANDARD.encode("hunter22\n")), MASK);
        assert_eq!(masker.mask("ab stays"), "ab stays");
        assert_eq!(masker.mask("> line two"), "> [MASKED]");
        assert_eq!(Masker::default().mask("plain"), "plain");
    }

    #[test]
    fn masks_base64_wrapped_at_76_columns() {
        // What `echo "$S" | base64` prints for a 100-byte secret: a 76-column line, then the rest.
        let secret = "s3cr3t-".repeat(15);
        let encoded = STANDARD.encode(format!("{secret}\n"));
        let masker = Masker::new([secret.as_str()]).unwrap();
        let (first, rest) = encoded.split_at(76);
        assert_eq!(masker.mask(first), MASK);
        assert_eq!(masker.mask(rest), MASK);
        let printf = STANDARD.encode(&secret);
        assert_eq!(masker.mask(&printf[..76]), MASK);
        assert_eq!(masker.mask(&printf[76..]), MASK);
        // 58 bytes and a newline: the wrapped form's last line is four characters, left alone.
        let short = "k".repeat(58);
        let masker = Masker::new([short.as_str()]).unwrap();
        let encoded = STANDARD.encode(format!("{short}\n"));
        let tail = &encoded[76..];
        assert_eq!(tail.len(), 4);
        assert_eq!(masker.mask(&encoded[..76]), MASK);
        assert_eq!(masker.mask(tail), tail);
    }
}
