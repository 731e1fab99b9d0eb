//! Arrow-style bitmaps: bit `i` is bit `i % 8` of byte `i / 8`, least
//! significant bit first. Used for validity (1 = valid) and boolean values.

/// A read-only view of a bitmap of `len` bits.
#[derive(Debug, Clone, Copy)]
pub struct Bitmap<'a> {
    bytes: &'a [u8],
}

impl<'a> Bitmap<'a> {
    /// Wraps `bytes`; bits past `8 * bytes.len()` read as unset.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether bit `i` is set.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        self.bytes
            .get(i / 8)
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Number of unset bits among the first `len` (bits past the bytes
    /// count as unset), counted a byte at a time.
    pub fn count_unset(&self, len: usize) -> usize {
        let full = (len / 8).min(self.bytes.len());
        let set: usize = self.bytes[..full]
            .iter()
            .map(|byte| byte.count_ones() as usize)
            .sum();
        let rest = (full * 8..len).filter(|&i| self.get(i)).count();
        len - set - rest
    }
}

/// Builds a bitmap one bit at a time.
#[derive(Debug, Default, Clone)]
pub struct BitmapBuilder {
    bytes: Vec<u8>,
    len: usize,
}

impl BitmapBuilder {
    /// An empty builder with room for `bits` bits.
    pub fn with_capacity(bits: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bits.div_ceil(8)),
            len: 0,
        }
    }

    /// Appends one bit.
    #[inline]
    pub fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().expect("pushed above") |= 1 << (self.len % 8);
        }
        self.len += 1;
    }

    /// Appends `bits` in order. Whole bytes are packed eight bits at a
    /// time (a row mask of 8,192 rows took twice as long as the comparison
    /// that made it when pushed bit by bit in wasm).
    pub fn extend_from_bools(&mut self, bits: &[bool]) {
        let mut rest = bits;
        // Complete a partly filled last byte bit by bit.
        while !self.len.is_multiple_of(8) {
            let Some((&bit, tail)) = rest.split_first() else {
                return;
            };
            self.push(bit);
            rest = tail;
        }
        let bytes = rest.chunks_exact(8);
        let tail = bytes.remainder();
        self.len += rest.len() - tail.len();
        self.bytes.extend(bytes.map(|eight| {
            eight
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &bit)| byte | (u8::from(bit) << i))
        }));
        tail.iter().for_each(|&bit| self.push(bit));
    }

    /// Number of bits pushed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bit was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bitmap bytes: `ceil(len / 8)` of them.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// The bitmap as validity: `None` when every bit is set (no nulls), as
    /// the WIT contract allows.
    pub fn finish_validity(self) -> Option<Vec<u8>> {
        // A byte at a time: a column's validity is checked once per column
        // a plugin builds.
        let all_set = Bitmap::new(&self.bytes).count_unset(self.len) == 0;
        (!all_set).then_some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bits_lsb_first() {
        let bits = [true, false, true, true, false, false, false, false, true];
        let mut builder = BitmapBuilder::with_capacity(bits.len());
        bits.iter().for_each(|&b| builder.push(b));
        let bytes = builder.finish();
        assert_eq!(bytes, vec![0b0000_1101, 0b0000_0001]);
        let view = Bitmap::new(&bytes);
        for (i, &b) in bits.iter().enumerate() {
            assert_eq!(view.get(i), b, "bit {i}");
        }
        assert_eq!(view.count_unset(bits.len()), 5);
    }

    /// Whole bytes at a time give the same bitmap as bit by bit, from any
    /// starting offset and for any length.
    #[test]
    fn extending_from_bools_matches_pushing_each() {
        let bits: Vec<bool> = (0..100u32).map(|i| (i * 7 + i / 3) % 5 < 2).collect();
        for start in 0..10 {
            for len in [0, 1, 7, 8, 9, 16, 17, 63, 90] {
                let (head, body) = (&bits[..start], &bits[start..start + len]);
                let mut pushed = BitmapBuilder::default();
                head.iter().chain(body).for_each(|&b| pushed.push(b));
                let mut extended = BitmapBuilder::default();
                head.iter().for_each(|&b| extended.push(b));
                extended.extend_from_bools(body);
                assert_eq!(extended.len(), start + len);
                assert_eq!(
                    extended.finish(),
                    pushed.finish(),
                    "start {start}, len {len}"
                );
            }
        }
    }

    #[test]
    fn all_valid_becomes_none() {
        let mut builder = BitmapBuilder::default();
        (0..10).for_each(|_| builder.push(true));
        assert_eq!(builder.finish_validity(), None);
    }

    /// Counting a byte at a time agrees with counting bit by bit, whatever
    /// the length and wherever the one unset bit is (the last bit of a
    /// partial byte included); a bitmap with it keeps its validity.
    #[test]
    fn one_unset_bit_is_found_anywhere() {
        for len in [1, 7, 8, 9, 16, 23, 64, 65] {
            for unset in 0..len {
                let mut builder = BitmapBuilder::default();
                (0..len).for_each(|i| builder.push(i != unset));
                let bytes = builder.clone().finish();
                assert_eq!(Bitmap::new(&bytes).count_unset(len), 1, "{len}/{unset}");
                assert_eq!(builder.finish_validity(), Some(bytes), "{len}/{unset}");
            }
        }
        assert_eq!(
            Bitmap::new(&[0xFF]).count_unset(12),
            4,
            "bits past the bytes are unset"
        );
    }
}
