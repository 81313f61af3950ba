//! The VICI wire format (strongSwan's Versatile IKE Control Interface).
//!
//! Transport: every packet is a 32-bit big-endian length followed by that many bytes. A packet
//! is a type byte, for named types an 8-bit-length name, then a message. A message is a flat
//! sequence of elements: section start (named) / end, key-value (named, 16-bit-length value),
//! list start (named) / item / end. Values are byte strings; charon uses text for all of them.

use std::fmt;

/// Packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    CmdRequest = 0,
    CmdResponse = 1,
    CmdUnknown = 2,
    EventRegister = 3,
    EventUnregister = 4,
    EventConfirm = 5,
    EventUnknown = 6,
    Event = 7,
}

impl PacketType {
    pub fn from_u8(b: u8) -> Option<Self> {
        use PacketType::*;
        Some(match b {
            0 => CmdRequest,
            1 => CmdResponse,
            2 => CmdUnknown,
            3 => EventRegister,
            4 => EventUnregister,
            5 => EventConfirm,
            6 => EventUnknown,
            7 => Event,
            _ => return None,
        })
    }
    pub fn is_named(self) -> bool {
        matches!(
            self,
            PacketType::CmdRequest
                | PacketType::EventRegister
                | PacketType::EventUnregister
                | PacketType::Event
        )
    }
}

const SECTION_START: u8 = 1;
const SECTION_END: u8 = 2;
const KEY_VALUE: u8 = 3;
const LIST_START: u8 = 4;
const LIST_ITEM: u8 = 5;
const LIST_END: u8 = 6;

/// The largest packet charon accepts.
pub const MAX_PACKET: usize = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Value(Vec<u8>),
    List(Vec<Vec<u8>>),
    Section(Section),
}

/// An ordered section of named items (the root of a message is one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    pub items: Vec<(String, Item)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("VICI message truncated")]
    Truncated,
    #[error("VICI name longer than 255 bytes: {0}")]
    NameTooLong(String),
    #[error("VICI value longer than 65535 bytes in {0}")]
    ValueTooLong(String),
    #[error("malformed VICI message: {0}")]
    Malformed(String),
}

impl Section {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.items
            .push((key.to_string(), Item::Value(value.as_ref().to_vec())));
        self
    }

    pub fn list<I, S>(mut self, key: &str, items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.items.push((
            key.to_string(),
            Item::List(items.into_iter().map(|s| s.as_ref().to_vec()).collect()),
        ));
        self
    }

    pub fn section(mut self, key: &str, s: Section) -> Self {
        self.items.push((key.to_string(), Item::Section(s)));
        self
    }

    pub fn get(&self, key: &str) -> Option<&Item> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A value as text.
    pub fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Item::Value(v) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        }
    }

    pub fn sub(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Item::Section(s) => Some(s),
            _ => None,
        }
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Item::List(l)) => l
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
            _ => vec![],
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![];
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        for (name, item) in &self.items {
            match item {
                Item::Value(v) => {
                    out.push(KEY_VALUE);
                    put_name(out, name)?;
                    put_value(out, v, name)?;
                }
                Item::List(l) => {
                    out.push(LIST_START);
                    put_name(out, name)?;
                    for v in l {
                        out.push(LIST_ITEM);
                        put_value(out, v, name)?;
                    }
                    out.push(LIST_END);
                }
                Item::Section(s) => {
                    out.push(SECTION_START);
                    put_name(out, name)?;
                    s.encode_into(out)?;
                    out.push(SECTION_END);
                }
            }
        }
        Ok(())
    }

    pub fn decode(buf: &[u8]) -> Result<Section, CodecError> {
        let mut r = Reader { buf, pos: 0 };
        let s = r.section(0)?;
        if r.pos != buf.len() {
            return Err(CodecError::Malformed("unbalanced section end".into()));
        }
        Ok(s)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), CodecError> {
    let len = u8::try_from(name.len()).map_err(|_| CodecError::NameTooLong(name.to_string()))?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_value(out: &mut Vec<u8>, v: &[u8], name: &str) -> Result<(), CodecError> {
    let len = u16::try_from(v.len()).map_err(|_| CodecError::ValueTooLong(name.to_string()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn name(&mut self) -> Result<String, CodecError> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self) -> Result<Vec<u8>, CodecError> {
        let b = self.take(2)?;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn section(&mut self, depth: usize) -> Result<Section, CodecError> {
        if depth > 64 {
            return Err(CodecError::Malformed("sections nested too deep".into()));
        }
        let mut s = Section::new();
        while self.pos < self.buf.len() {
            match self.u8()? {
                SECTION_START => {
                    let name = self.name()?;
                    let sub = self.section(depth + 1)?;
                    s.items.push((name, Item::Section(sub)));
                }
                SECTION_END => {
                    if depth == 0 {
                        return Err(CodecError::Malformed("section end at top level".into()));
                    }
                    return Ok(s);
                }
                KEY_VALUE => {
                    let name = self.name()?;
                    let v = self.value()?;
                    s.items.push((name, Item::Value(v)));
                }
                LIST_START => {
                    let name = self.name()?;
                    let mut l = vec![];
                    loop {
                        match self.u8()? {
                            LIST_ITEM => l.push(self.value()?),
                            LIST_END => break,
                            t => {
                                return Err(CodecError::Malformed(format!(
                                    "element {t} inside list {name}"
                                )))
                            }
                        }
                    }
                    s.items.push((name, Item::List(l)));
                }
                t => return Err(CodecError::Malformed(format!("unknown element type {t}"))),
            }
        }
        if depth > 0 {
            return Err(CodecError::Truncated);
        }
        Ok(s)
    }
}

/// Encode a whole packet, length prefix included.
pub fn encode_packet(
    ty: PacketType,
    name: Option<&str>,
    msg: Option<&Section>,
) -> Result<Vec<u8>, CodecError> {
    let mut body = vec![ty as u8];
    if let Some(n) = name {
        put_name(&mut body, n)?;
    }
    if let Some(m) = msg {
        m.encode_into(&mut body)?;
    }
    if body.len() > MAX_PACKET {
        return Err(CodecError::Malformed(format!(
            "packet of {} bytes exceeds 512 KiB",
            body.len()
        )));
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a packet body (without the length prefix).
pub fn decode_packet(body: &[u8]) -> Result<(PacketType, Option<String>, Section), CodecError> {
    let (&t, rest) = body.split_first().ok_or(CodecError::Truncated)?;
    let ty =
        PacketType::from_u8(t).ok_or_else(|| CodecError::Malformed(format!("packet type {t}")))?;
    let mut r = Reader { buf: rest, pos: 0 };
    let name = if ty.is_named() { Some(r.name()?) } else { None };
    let msg = Section::decode(&rest[r.pos..])?;
    Ok((ty, name, msg))
}

/// Render a message for snapshots and debugging (values shown as text).
impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn go(s: &Section, f: &mut fmt::Formatter<'_>, indent: usize) -> fmt::Result {
            let pad = "  ".repeat(indent);
            for (k, v) in &s.items {
                match v {
                    Item::Value(v) => writeln!(f, "{pad}{k} = {}", String::from_utf8_lossy(v))?,
                    Item::List(l) => {
                        let items: Vec<String> = l
                            .iter()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .collect();
                        writeln!(f, "{pad}{k} = [{}]", items.join(", "))?
                    }
                    Item::Section(sub) => {
                        writeln!(f, "{pad}{k} {{")?;
                        go(sub, f, indent + 1)?;
                        writeln!(f, "{pad}}}")?
                    }
                }
            }
            Ok(())
        }
        go(self, f, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_readme_example() {
        // key1 = value1, section1 { sub-section { key2 = value2 } list1 = [item1, item2] }
        let msg = Section::new().kv("key1", "value1").section(
            "section1",
            Section::new()
                .section("sub-section", Section::new().kv("key2", "value2"))
                .list("list1", ["item1", "item2"]),
        );
        let mut want = vec![3, 4];
        want.extend(b"key1");
        want.extend([0, 6]);
        want.extend(b"value1");
        want.extend([1, 8]);
        want.extend(b"section1");
        want.extend([1, 11]);
        want.extend(b"sub-section");
        want.extend([3, 4]);
        want.extend(b"key2");
        want.extend([0, 6]);
        want.extend(b"value2");
        want.push(2);
        want.extend([4, 5]);
        want.extend(b"list1");
        want.extend([5, 0, 5]);
        want.extend(b"item1");
        want.extend([5, 0, 5]);
        want.extend(b"item2");
        want.push(6);
        want.push(2);
        assert_eq!(msg.encode().unwrap(), want);
        assert_eq!(Section::decode(&want).unwrap(), msg);
    }

    #[test]
    fn packets_round_trip() {
        let m = Section::new().kv("child", "x");
        let p = encode_packet(PacketType::CmdRequest, Some("initiate"), Some(&m)).unwrap();
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        assert_eq!(len, p.len() - 4);
        let (ty, name, msg) = decode_packet(&p[4..]).unwrap();
        assert_eq!(
            (ty, name.as_deref(), msg),
            (PacketType::CmdRequest, Some("initiate"), m)
        );
        let (ty, name, msg) =
            decode_packet(&[PacketType::CmdResponse as u8, 3, 1, b'a', 0, 1, b'b']).unwrap();
        assert_eq!((ty, name), (PacketType::CmdResponse, None));
        assert_eq!(msg.str("a").as_deref(), Some("b"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[1u8, 3, b'a'][..],
            &[2],
            &[4, 1, b'l', 3],
            &[3, 5, b'a'],
            &[9],
            &[5, 0, 1, b'x'],
        ] {
            assert!(Section::decode(bad).is_err(), "{bad:?}");
        }
        assert!(decode_packet(&[]).is_err());
        assert!(decode_packet(&[42]).is_err());
    }

    /// Random and mutated bytes from the VICI socket: an error or a section, never a panic,
    /// and never an allocation larger than the input says (lengths are checked before use).
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn section() -> impl Strategy<Value = Section> {
            proptest::collection::vec(
                (
                    "[a-z][a-z0-9_-]{0,12}",
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..8,
            )
            .prop_map(|kvs| {
                kvs.into_iter()
                    .fold(Section::new(), |s, (k, v)| s.kv(&k, v))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_packet(&bytes);
                let _ = Section::decode(&bytes);
            }

            #[test]
            fn mutated_packets_never_panic(
                s in section(),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                cut in any::<usize>(),
            ) {
                let mut p = encode_packet(PacketType::CmdResponse, None, Some(&s)).unwrap()[4..].to_vec();
                for (at, b) in flips {
                    let n = p.len();
                    p[at % n] = b;
                }
                let keep = cut % (p.len() + 1);
                let _ = decode_packet(&p[..keep]);
            }

            #[test]
            fn sections_round_trip(s in section()) {
                let p = encode_packet(PacketType::CmdRequest, Some("x"), Some(&s)).unwrap();
                // The length prefix is the reader's; the body follows it.
                let (_, name, back) = decode_packet(&p[4..]).unwrap();
                prop_assert_eq!(name.as_deref(), Some("x"));
                prop_assert_eq!(back.to_string(), s.to_string());
            }
        }
    }
}
