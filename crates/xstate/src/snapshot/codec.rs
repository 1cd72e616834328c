//! The `.xsnap` byte encoding (feature `std`): header, CBOR body, CRC-32 trailer
//! (`docs/xsnap.md` §2–§4).
//!
//! Each format version has its own private wire schema (`v1::Body`); [`Snapshot::decode`]
//! dispatches on the header's version and converts the wire value into the current
//! [`Snapshot`], so a file written by any released version keeps decoding.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::crc32::crc32;
use super::{Snapshot, SnapshotError, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION};

/// A byte string that serializes as a CBOR byte string (major type 2), not an array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                // Tolerated on input (some CBOR tools write arrays of bytes); never written.
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A CBOR map read as a list of pairs, so that a repeated key is an error rather than a silent
/// overwrite; written from a `BTreeMap` (keys ascending, canonical).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pairs<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Pairs<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Vis<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = a.next_entry::<K, V>()? {
                    out.push(kv);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

fn to_map<K: Ord + Copy + Into<u64>, V>(
    field: &'static str,
    p: Pairs<K, V>,
) -> Result<BTreeMap<K, V>, SnapshotError> {
    let mut m = BTreeMap::new();
    for (k, v) in p.0 {
        if m.insert(k, v).is_some() {
            return Err(SnapshotError::DuplicateKey {
                field,
                key: k.into(),
            });
        }
    }
    Ok(m)
}

/// Version 1 of the wire schema. Frozen: a later version gets its own module.
mod v1 {
    use super::{Bytes, Pairs};
    use alloc::string::String;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct Geometry {
        pub size: u32,
        pub offset: u32,
        pub flags: u32,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Source {
        pub vendor: String,
        pub family: u32,
        pub model: u32,
        pub stepping: u32,
        pub xcr0_supported: u64,
        pub xss_supported: u64,
        pub xsave_features: u32,
        pub max_standard_size: u32,
        pub components: Pairs<u8, Geometry>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Legacy {
        pub fcw: u16,
        pub fsw: u16,
        pub ftw: u8,
        pub fop: u16,
        pub fip: u64,
        pub fdp: u64,
        pub mxcsr: u32,
        pub mxcsr_mask: u32,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Component {
        pub name: String,
        pub data: Bytes,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Body {
        pub producer: String,
        pub source: Source,
        pub xcr0: u64,
        pub xss: u64,
        pub xfd: u64,
        pub xfd_err: u64,
        pub legacy: Legacy,
        pub components: Pairs<u8, Component>,
        pub msrs: Pairs<u32, u64>,
    }
}

/// The v1 body written straight from a [`Snapshot`] by reference: the same CBOR as
/// [`v1::Body`] (same keys in the same order, same types), without cloning the snapshot.
mod v1_out {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use serde::ser::{SerializeMap, SerializeStruct, Serializer};
    use serde::Serialize;

    use crate::snapshot::{Legacy, Snapshot, SourceComponent, SourceCpu};

    pub struct Body<'a>(pub &'a Snapshot);
    struct Source<'a>(&'a SourceCpu);
    struct LegacyOut<'a>(&'a Legacy);
    struct Geometries<'a>(&'a BTreeMap<u8, SourceComponent>);
    struct Components<'a>(&'a BTreeMap<u8, Vec<u8>>);
    struct ComponentOut<'a>(u8, &'a [u8]);
    struct Bytes<'a>(&'a [u8]);
    struct Msrs<'a>(&'a BTreeMap<u32, u64>);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    impl Serialize for Body<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let b = self.0;
            let mut st = s.serialize_struct("Body", 9)?;
            st.serialize_field("producer", b.producer.as_str())?;
            st.serialize_field("source", &Source(&b.source))?;
            st.serialize_field("xcr0", &b.xcr0)?;
            st.serialize_field("xss", &b.xss)?;
            st.serialize_field("xfd", &b.xfd)?;
            st.serialize_field("xfd_err", &b.xfd_err)?;
            st.serialize_field("legacy", &LegacyOut(&b.legacy))?;
            st.serialize_field("components", &Components(&b.components))?;
            st.serialize_field("msrs", &Msrs(&b.msrs))?;
            st.end()
        }
    }

    impl Serialize for Source<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let c = self.0;
            let mut st = s.serialize_struct("Source", 9)?;
            st.serialize_field("vendor", c.vendor.as_str())?;
            st.serialize_field("family", &c.family)?;
            st.serialize_field("model", &c.model)?;
            st.serialize_field("stepping", &c.stepping)?;
            st.serialize_field("xcr0_supported", &c.xcr0_supported)?;
            st.serialize_field("xss_supported", &c.xss_supported)?;
            st.serialize_field("xsave_features", &c.xsave_features)?;
            st.serialize_field("max_standard_size", &c.max_standard_size)?;
            st.serialize_field("components", &Geometries(&c.components))?;
            st.end()
        }
    }

    impl Serialize for Geometries<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (id, g) in self.0 {
                m.serialize_entry(
                    id,
                    &super::v1::Geometry {
                        size: g.size,
                        offset: g.offset,
                        flags: g.flags,
                    },
                )?;
            }
            m.end()
        }
    }

    impl Serialize for LegacyOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let l = self.0;
            super::v1::Legacy {
                fcw: l.fcw,
                fsw: l.fsw,
                ftw: l.ftw,
                fop: l.fop,
                fip: l.fip,
                fdp: l.fdp,
                mxcsr: l.mxcsr,
                mxcsr_mask: l.mxcsr_mask,
            }
            .serialize(s)
        }
    }

    impl Serialize for Components<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (&id, d) in self.0 {
                m.serialize_entry(&id, &ComponentOut(id, d))?;
            }
            m.end()
        }
    }

    impl Serialize for ComponentOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Component", 2)?;
            match crate::components::Component::get(self.0) {
                Some(c) => st.serialize_field("name", c.name)?,
                None => {
                    st.serialize_field("name", &crate::components::Component::name_of(self.0))?
                }
            }
            st.serialize_field("data", &Bytes(self.1))?;
            st.end()
        }
    }

    impl Serialize for Msrs<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter())
        }
    }
}

fn from_v1(b: v1::Body) -> Result<Snapshot, SnapshotError> {
    let comps = to_map("source.components", b.source.components)?;
    let components = to_map("components", b.components)?;
    Ok(Snapshot {
        producer: b.producer,
        source: super::SourceCpu {
            vendor: b.source.vendor,
            family: b.source.family,
            model: b.source.model,
            stepping: b.source.stepping,
            xcr0_supported: b.source.xcr0_supported,
            xss_supported: b.source.xss_supported,
            xsave_features: b.source.xsave_features,
            max_standard_size: b.source.max_standard_size,
            components: comps
                .into_iter()
                .map(|(id, g)| {
                    (
                        id,
                        super::SourceComponent {
                            size: g.size,
                            offset: g.offset,
                            flags: g.flags,
                        },
                    )
                })
                .collect(),
        },
        xcr0: b.xcr0,
        xss: b.xss,
        xfd: b.xfd,
        xfd_err: b.xfd_err,
        legacy: super::Legacy {
            fcw: b.legacy.fcw,
            fsw: b.legacy.fsw,
            ftw: b.legacy.ftw,
            fop: b.legacy.fop,
            fip: b.legacy.fip,
            fdp: b.legacy.fdp,
            mxcsr: b.legacy.mxcsr,
            mxcsr_mask: b.legacy.mxcsr_mask,
        },
        components: components
            .into_iter()
            .map(|(id, c)| (id, c.data.0))
            .collect(),
        msrs: to_map("msrs", b.msrs)?,
    })
}

impl Snapshot {
    /// Encodes the snapshot as an `.xsnap` file of the current [`VERSION`]: 16-byte header
    /// (magic, version, reserved, body length), the CBOR body, the CRC-32 of both.
    ///
    /// ```
    /// use xstate::snapshot::Snapshot;
    /// let mut s = Snapshot::default();
    /// s.xcr0 = 0x3;
    /// s.components.insert(1, vec![0xab; 256]);
    /// let bytes = s.encode().unwrap();
    /// assert!(xstate::snapshot::is_snapshot(&bytes));
    /// assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    /// ```
    ///
    /// Fails only if the CBOR writer reports an error (it has none to report for this schema
    /// written to memory) or the body exceeds 4 GiB.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        // Header first (the body length patched in once known), the body written after it in
        // place, the CRC last: one buffer, sized for the component contents up front.
        let content: usize = self.components.values().map(Vec::len).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + content + 1024 + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        // Writing to a Vec cannot fail; the CBOR writer's only other error is a value it
        // cannot represent, which this schema has none of.
        ciborium::into_writer(&v1_out::Body(self), &mut out).map_err(|_| SnapshotError::Body {
            message: String::from("the CBOR writer refused the body"),
        })?;
        let body = out.len() - HEADER_LEN;
        let Ok(body_len) = u32::try_from(body) else {
            return Err(SnapshotError::Body {
                message: format!("body of {body} bytes exceeds the 4 GiB the header can declare"),
            });
        };
        out[12..16].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes an `.xsnap` file of any version from 1 to [`VERSION`]. Checks the magic, the
    /// version, the reserved field, the length, the CRC-32 and the schema (all keys present,
    /// no key twice); unknown keys are ignored. It does not apply the `snapshot` validation
    /// profile: call [`super::validate`] for that.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
                return Err(bad_magic(bytes));
            }
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(bad_magic(bytes));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version == 0 || version > VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let reserved = u16::from_le_bytes([bytes[10], bytes[11]]);
        if reserved != 0 {
            return Err(SnapshotError::ReservedHeader { value: reserved });
        }
        let declared = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let needed = (HEADER_LEN + TRAILER_LEN) as u64 + u64::from(declared);
        if needed != bytes.len() as u64 {
            return Err(SnapshotError::LengthMismatch {
                declared,
                needed,
                actual: bytes.len(),
            });
        }
        let end = HEADER_LEN + declared as usize;
        let stored =
            u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        let computed = crc32(&bytes[..end]);
        if stored != computed {
            return Err(SnapshotError::Checksum {
                offset: end,
                stored,
                computed,
            });
        }
        let body = &bytes[HEADER_LEN..end];
        match version {
            1 => {
                let b: v1::Body = ciborium::from_reader(body).map_err(body_error)?;
                from_v1(b)
            }
            _ => Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            }),
        }
    }
}

fn bad_magic(bytes: &[u8]) -> SnapshotError {
    let mut found = [0u8; 8];
    for (d, s) in found.iter_mut().zip(bytes) {
        *d = *s;
    }
    SnapshotError::BadMagic { found }
}

fn body_error<E>(e: ciborium::de::Error<E>) -> SnapshotError {
    let message = match e {
        // Reading from a byte slice fails only at its end.
        ciborium::de::Error::Io(_) => String::from(
            "the body ends inside a CBOR value: the file is truncated or its length field damaged",
        ),
        ciborium::de::Error::Syntax(off) => format!("CBOR syntax error at body byte {off}"),
        ciborium::de::Error::Semantic(off, msg) => match off {
            Some(o) => format!("at body byte {o}: {msg}"),
            None => msg,
        },
        ciborium::de::Error::RecursionLimitExceeded => String::from("nesting too deep"),
    };
    SnapshotError::Body { message }
}
