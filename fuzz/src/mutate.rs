//! Mutations of an input, and the random numbers they draw.

/// xorshift64*: small, fast and good enough to pick mutations (not for
/// anything secret).
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens worth inserting for `target`: the syntax its decoder splits on
/// and values at the edges of each type.
fn dictionary(target: &str) -> &'static [&'static str] {
    const NUMBERS: &[&str] = &[
        "-9223372036854775808",
        "9223372036854775807",
        "-99999999999999999999",
        "18446744073709551616",
        "1e400",
        "-1e400",
        "1.5",
        "NaN",
        "inf",
        "-0",
        "0x10",
        "1e-400",
    ];
    match target {
        "csv" => &[
            ",",
            "\"",
            "\n",
            "\r\n",
            "\"\"",
            "NA",
            "id",
            "name",
            "score",
            "ok",
            "day",
            "at",
            "raw",
            "2024-13-45",
            "1970-01-01T00:00:00Z",
            "\u{feff}",
            "true",
            "\\",
            "1e400",
            "-99999999999999999999",
            ",,,,,,,,,,",
        ],
        "jsonl" | "json" => &[
            "[",
            "]",
            "{",
            "}",
            "\"",
            ":",
            ",",
            "\n",
            "\\u0000",
            "\\ud800",
            "null",
            "true",
            "\"id\":",
            "\"score\":",
            "\"extra\":",
            "[[[[[[[[",
            "{\"a\":",
            "1e400",
            "-99999999999999999999",
            "1.5",
            "\"2024-01-02\"",
            "\u{0}",
        ],
        "pipeline-toml" | "service-toml" => &[
            "[[stages]]\n",
            "[source]\n",
            "[sink]\n",
            "[quarantine]\n",
            "[service]\n",
            "[[tenants]]\n",
            "[[pipelines]]\n",
            " = ",
            "\"",
            "'''",
            "{",
            "}",
            "[",
            "]",
            ",",
            "\n",
            "#",
            "builtin:",
            "../",
            "/etc/passwd",
            "-1",
            "1e400",
            "inf",
            "nan",
            "9223372036854775807",
            "1979-05-27T07:32:00Z",
            "a.b.c = 1\n",
        ],
        _ => NUMBERS,
    }
}

/// A mutant of `base` (with `other` for splicing): one to four mutations,
/// at most `max_len` bytes.
pub fn mutate(base: &[u8], other: &[u8], rng: &mut Rng, target: &str, max_len: usize) -> Vec<u8> {
    let mut input = base.to_vec();
    let tokens = dictionary(target);
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 | 3 => {
                let token = tokens[rng.below(tokens.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                input.drain(start..end);
            }
            5 if len > 0 => {
                // Repeat a short range many times: deep nesting, long
                // fields, many records.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(8)).min(len);
                let times = 1 << rng.below(16);
                let piece = input[start..end].to_vec();
                let mut repeated = Vec::with_capacity(piece.len() * times);
                for _ in 0..times {
                    repeated.extend_from_slice(&piece);
                    if repeated.len() > max_len / 2 {
                        break;
                    }
                }
                input.splice(start..start, repeated);
            }
            6 if !other.is_empty() => {
                let at = rng.below(len + 1);
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(64)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            _ if len > 1 => input.truncate(rng.below(len)),
            _ => input.push(rng.next() as u8),
        }
        input.truncate(max_len);
    }
    input
}
