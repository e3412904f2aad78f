//! Variant ids: the stable, human-readable names of subblock alternatives (`attn:gqa(kv=2)`,
//! `ffn:width(768)`, `ffn:noop`, ...). Every stage keys its tables by `(layer, VariantId)`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Which residual branch of a layer a subblock is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubblockKind {
    /// The attention branch `x + attn(norm(x))`.
    #[serde(rename = "attn")]
    Attention,
    /// The feed-forward branch `x + ffn(norm(x))`.
    Ffn,
}

impl SubblockKind {
    /// The id prefix: `attn` or `ffn`.
    pub fn prefix(self) -> &'static str {
        match self {
            SubblockKind::Attention => "attn",
            SubblockKind::Ffn => "ffn",
        }
    }

    /// Both kinds, attention first (the order inside a layer).
    pub const ALL: [SubblockKind; 2] = [SubblockKind::Attention, SubblockKind::Ffn];
}

impl fmt::Display for SubblockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// A subblock variant id: a kind plus a call-like name, e.g. `attn:gqa(kv=2)` or `ffn:width(768)`.
///
/// The name grammar is `head` or `head(arg, key=value, ...)`; heads and keys are lowercase
/// identifiers, values have no commas or parentheses. Plugins choose their own heads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VariantId {
    kind: SubblockKind,
    name: String,
}

impl VariantId {
    /// Builds an id from a kind and a name such as `gqa(kv=2)`.
    pub fn new(kind: SubblockKind, name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        parse_call(&name).map_err(|e| Error::invalid(format!("variant `{kind}:{name}`: {e}")))?;
        Ok(VariantId { kind, name })
    }

    /// The subblock this variant replaces.
    pub fn kind(&self) -> SubblockKind {
        self.kind
    }

    /// The name without the kind prefix, e.g. `gqa(kv=2)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The head of the name, e.g. `gqa` for `gqa(kv=2)`.
    pub fn head(&self) -> &str {
        self.name.split('(').next().unwrap_or(&self.name)
    }

    /// The arguments of the name in order: `(Some(key), value)` or `(None, value)`.
    pub fn args(&self) -> Vec<(Option<String>, String)> {
        // The name was validated at construction.
        parse_call(&self.name).map(|(_, a)| a).unwrap_or_default()
    }

    /// The value of a `key=value` argument.
    pub fn arg(&self, key: &str) -> Option<String> {
        self.args()
            .into_iter()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v)
    }

    /// The first positional argument.
    pub fn positional(&self, index: usize) -> Option<String> {
        self.args()
            .into_iter()
            .filter(|(k, _)| k.is_none())
            .nth(index)
            .map(|(_, v)| v)
    }

    /// A numeric argument, by key or (when `key` is `None`) the first positional one.
    pub fn usize_arg(&self, key: Option<&str>) -> Result<usize, Error> {
        let raw = match key {
            Some(k) => self.arg(k),
            None => self.positional(0),
        }
        .ok_or_else(|| {
            Error::invalid(format!(
                "variant `{self}` lacks the argument {}",
                key.unwrap_or("(positional)")
            ))
        })?;
        raw.parse()
            .map_err(|_| Error::invalid(format!("variant `{self}`: `{raw}` is not a whole number")))
    }
}

impl fmt::Display for VariantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

impl FromStr for VariantId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (prefix, name) = s.split_once(':').ok_or_else(|| {
            Error::invalid(format!(
                "variant `{s}` has no kind prefix (expected `attn:...` or `ffn:...`)"
            ))
        })?;
        let kind = match prefix.trim() {
            "attn" => SubblockKind::Attention,
            "ffn" => SubblockKind::Ffn,
            other => {
                return Err(Error::invalid(format!(
                    "variant `{s}`: unknown kind `{other}` (expected `attn` or `ffn`)"
                )));
            }
        };
        VariantId::new(kind, name.trim())
    }
}

impl TryFrom<String> for VariantId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<VariantId> for String {
    fn from(v: VariantId) -> String {
        v.to_string()
    }
}

type Call = (String, Vec<(Option<String>, String)>);

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
}

fn parse_call(name: &str) -> Result<Call, String> {
    let name = name.trim();
    let (head, rest) = match name.find('(') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    if !is_ident(head) {
        return Err(format!(
            "`{head}` is not a lowercase identifier (a-z, 0-9, _, -)"
        ));
    }
    let mut args = Vec::new();
    if let Some(rest) = rest {
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| "missing closing `)`".to_string())?;
        if inner.contains('(') || inner.contains(')') {
            return Err("nested parentheses are not allowed".into());
        }
        for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => {
                    let (k, v) = (k.trim(), v.trim());
                    if !is_ident(k) || v.is_empty() {
                        return Err(format!("bad argument `{part}`"));
                    }
                    args.push((Some(k.to_string()), v.to_string()));
                }
                None => args.push((None, part.to_string())),
            }
        }
    }
    Ok((head.to_string(), args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in [
            "attn:gqa(kv=2)",
            "attn:linear",
            "attn:noop",
            "ffn:width(768)",
            "ffn:noop",
        ] {
            let v: VariantId = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v: VariantId = "attn:gqa(kv=2)".parse().unwrap();
        assert_eq!(v.kind(), SubblockKind::Attention);
        assert_eq!(v.head(), "gqa");
        assert_eq!(v.usize_arg(Some("kv")).unwrap(), 2);
        let w: VariantId = "ffn:width(768)".parse().unwrap();
        assert_eq!(w.usize_arg(None).unwrap(), 768);
    }

    #[test]
    fn rejects_malformed_ids_with_reason() {
        for (s, why) in [
            ("gqa(kv=2)", "no kind prefix"),
            ("mlp:width(3)", "unknown kind"),
            ("ffn:Width(3)", "lowercase"),
            ("ffn:width(3", "closing"),
            ("ffn:width(a=)", "bad argument"),
        ] {
            let e = s.parse::<VariantId>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let v: VariantId = "ffn:width(768)".parse().unwrap();
        let j = serde_json::to_string(&v).unwrap();
        assert_eq!(j, "\"ffn:width(768)\"");
        let back: VariantId = serde_json::from_str(&j).unwrap();
        assert_eq!(back, v);
    }
}
