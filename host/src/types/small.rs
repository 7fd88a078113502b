//! Short strings kept inline. Every call's outcome carries the plugin's and the callback's
//! names and, usually, a small JSON result (`null`, a number, a short record): copying each
//! into a heap `String` cost an allocation and a free per call, a fifth of a no-op call.

use std::fmt;

/// Bytes kept inline; longer strings go to the heap.
const INLINE: usize = 22;

/// A string of up to [`INLINE`] bytes stored inline, longer ones on the heap.
#[derive(Clone)]
pub(crate) struct SmallStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl SmallStr {
    /// A copy of `text`.
    #[inline]
    pub(crate) fn new(text: &str) -> SmallStr {
        if text.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            SmallStr(Repr::Inline {
                len: text.len() as u8,
                bytes,
            })
        } else {
            SmallStr(Repr::Heap(text.into()))
        }
    }

    /// Takes `text` without copying it when it is long.
    pub(crate) fn from_string(text: String) -> SmallStr {
        if text.len() <= INLINE {
            SmallStr::new(&text)
        } else {
            SmallStr(Repr::Heap(text.into_boxed_str()))
        }
    }

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let bytes = &bytes[..*len as usize];
                // SAFETY: the inline bytes are a copy of a `&str` of `len` bytes (`new`), so
                // they are valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(text) => text,
        }
    }
}

impl fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &SmallStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallStr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_stay_inline_and_long_ones_round_trip() {
        let short = SmallStr::new("bench-noop");
        assert!(matches!(short.0, Repr::Inline { .. }));
        assert_eq!(short.as_str(), "bench-noop");
        let long = "é".repeat(40);
        let heap = SmallStr::new(&long);
        assert!(matches!(heap.0, Repr::Heap(_)));
        assert_eq!(heap.as_str(), long);
        assert_eq!(SmallStr::from_string(long.clone()).as_str(), long);
        assert_eq!(SmallStr::new("").as_str(), "");
        assert_eq!(SmallStr::new(&"x".repeat(INLINE)).as_str().len(), INLINE);
        assert_eq!(std::mem::size_of::<SmallStr>(), 24);
    }
}
