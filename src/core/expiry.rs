//! When a source Secret's credential stops working (SPEC "Credentials that expire").
//!
//! Read, in this order:
//! 1. the Secret's `pullsecret-injector/expires-at` annotation (RFC 3339 with any offset, or
//!    Unix seconds);
//! 2. else the `expiresAt` annotation external-secrets' generator examples write;
//! 3. else the `exp` claim of a JWT in the docker config: an entry's `password` (or the
//!    password half of `auth`), `identitytoken` or `registrytoken`. Only the payload is
//!    decoded (base64url), no signature is checked: the expiry is a hint for alerts and
//!    warnings, never a reason to withhold a Secret. With several entries, the earliest wins
//!    (the first credential to stop working is the one to warn about).
//!
//! An annotation that cannot be parsed is reported with its name and value (annotations are
//! not secret) and the next source is tried. Tokens are: no token, claim or payload is ever
//! kept, logged, or put in an error; only the `exp` number and where it was found.
//!
//! Pure: the clock is the caller's ([`Expiry::status`] takes `now`).

use std::fmt;

use base64::Engine;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::core::dockercfg::{SourceSecret, without_userinfo};
use crate::core::names::{
    EXPIRES_AT_ANNOTATION, EXTERNAL_SECRETS_EXPIRES_AT_ANNOTATION, ISSUED_AT_ANNOTATION,
};

/// How long before its expiry a credential is warned about: an hour, long enough for whoever
/// rotates it (a person, external-secrets, a refresh job) to act before a Pod fails.
pub const SOON_SECONDS: i64 = 3600;

/// Where an expiry was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// One of the two annotations, by name.
    Annotation(&'static str),
    /// The `exp` claim of a JWT in a docker config entry: the entry's key (userinfo
    /// redacted) and the field (`password`, `auth`, `identitytoken`, `registrytoken`).
    Token { key: String, field: &'static str },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Annotation(name) => write!(f, "annotation {name}"),
            Origin::Token { key, field } => write!(f, "JWT exp in {field} of {key}"),
        }
    }
}

/// A credential's expiry: Unix seconds, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub at: i64,
    pub origin: Origin,
    /// When the credential was issued, if known (the `pullsecret-injector/issued-at`
    /// annotation, else the token's `iat`): shortens the warning threshold to a third of the
    /// lifetime, so a credential that always lives an hour or less is not warned about at
    /// every Pod while it is renewed on time.
    pub issued: Option<i64>,
}

/// An expiry against a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// More than [`Expiry::warn_seconds`] left.
    Valid,
    /// Within [`Expiry::warn_seconds`], not yet expired.
    ExpiresSoon,
    /// At or past its expiry.
    Expired,
}

impl Expiry {
    /// How long before its expiry it is warned about: [`SOON_SECONDS`], or a third of its
    /// lifetime when that is shorter and the issue time is known.
    pub fn warn_seconds(&self) -> i64 {
        match self.issued {
            Some(issued) if issued < self.at => ((self.at - issued) / 3).min(SOON_SECONDS),
            _ => SOON_SECONDS,
        }
    }

    pub fn status(&self, now: i64) -> Status {
        if self.at <= now {
            Status::Expired
        } else if self.at - now <= self.warn_seconds() {
            Status::ExpiresSoon
        } else {
            Status::Valid
        }
    }

    /// The expiry as RFC 3339 in UTC (`2026-12-07T03:00:00Z`); Unix seconds when out of range.
    pub fn rfc3339(&self) -> String {
        rfc3339(self.at)
    }

    /// `expires at T` or `expired at T` (with its origin), as `check-config`, `explain` and
    /// `audit` print it.
    pub fn describe(&self, now: i64) -> String {
        let verb = match self.status(now) {
            Status::Expired => "expired",
            Status::Valid | Status::ExpiresSoon => "expires",
        };
        format!("{verb} at {} ({})", self.rfc3339(), self.origin)
    }
}

/// Unix seconds as RFC 3339 in UTC; the number itself when out of range.
pub fn rfc3339(at: i64) -> String {
    Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

/// An annotation that is there but not a time. Not secret: it names the annotation and
/// quotes its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is neither RFC 3339 nor Unix seconds; ignored")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
}

/// What was read from one Secret: its expiry (if any source gave one) and the annotations
/// that could not be parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub expiry: Option<Expiry>,
    pub problems: Vec<AnnotationError>,
}

/// Reads `secret`'s expiry; `annotation` looks up one of its annotations by name.
pub fn read<'a>(annotation: impl Fn(&str) -> Option<&'a str>, secret: &SourceSecret) -> Reading {
    let mut reading = Reading::default();
    for name in [
        EXPIRES_AT_ANNOTATION,
        EXTERNAL_SECRETS_EXPIRES_AT_ANNOTATION,
    ] {
        let Some(value) = annotation(name) else {
            continue;
        };
        match parse_time(value) {
            Some(at) => {
                reading.expiry = Some(Expiry {
                    at,
                    origin: Origin::Annotation(name),
                    issued: None,
                });
                break;
            }
            None => reading.problems.push(AnnotationError {
                annotation: name,
                value: value.to_string(),
            }),
        }
    }
    if reading.expiry.is_none() {
        reading.expiry = earliest_token_expiry(secret);
    }
    if let Some(expiry) = &mut reading.expiry
        && let Some(value) = annotation(ISSUED_AT_ANNOTATION)
    {
        match parse_time(value) {
            Some(issued) => expiry.issued = Some(issued),
            None => reading.problems.push(AnnotationError {
                annotation: ISSUED_AT_ANNOTATION,
                value: value.to_string(),
            }),
        }
    }
    reading
}

/// [`read`] for a Secret given as JSON (a manifest, or the API object).
pub fn read_json(object: &Value, secret: &SourceSecret) -> Reading {
    let annotations = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    read(|name| annotations?.get(name)?.as_str(), secret)
}

/// RFC 3339 (any offset, fractions dropped) or Unix seconds (digits only).
pub fn parse_time(value: &str) -> Option<i64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok();
    }
    value.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// The fields of a docker config entry that may hold a JWT.
const TOKEN_FIELDS: [&str; 3] = ["password", "identitytoken", "registrytoken"];

/// The earliest `exp` of any JWT in the docker config's entries; `None` when none has one
/// (or the Secret is not a docker config at all: that is reported elsewhere).
fn earliest_token_expiry(secret: &SourceSecret) -> Option<Expiry> {
    let auths = crate::core::dockercfg::auths(secret).ok()?;
    let mut earliest: Option<Expiry> = None;
    for (key, entry) in &auths {
        for (field, exp, iat) in entry_token_expiries(entry) {
            if earliest.as_ref().is_none_or(|e| exp < e.at) {
                earliest = Some(Expiry {
                    at: exp,
                    origin: Origin::Token {
                        key: without_userinfo(key).into_owned(),
                        field,
                    },
                    issued: iat,
                });
            }
        }
    }
    earliest
}

/// `(field, exp, iat)` for each field of one entry that holds a JWT with an `exp`.
fn entry_token_expiries(entry: &Value) -> Vec<(&'static str, i64, Option<i64>)> {
    let mut found = Vec::new();
    for field in TOKEN_FIELDS {
        if let Some((exp, iat)) = entry.get(field).and_then(Value::as_str).and_then(jwt_times) {
            found.push((field, exp, iat));
        }
    }
    // `auth` is base64 of `user:password`; its password may be the token when `password`
    // itself is absent (tools that write `auth` alone).
    if entry.get("password").is_none()
        && let Some(exp) = entry
            .get("auth")
            .and_then(Value::as_str)
            .and_then(|auth| {
                base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|pair| pair.split_once(':').and_then(|(_, p)| jwt_times(p)))
    {
        found.push(("auth", exp.0, exp.1));
    }
    found
}

/// The `exp` claim of a JWT (`header.payload.signature`, base64url, padding tolerated);
/// `None` for anything that is not a JWT or has no numeric `exp`. The signature is not checked.
pub fn jwt_exp(token: &str) -> Option<i64> {
    jwt_times(token).map(|(exp, _)| exp)
}

/// A JWT's `exp` and, if it has one, `iat`.
fn jwt_times(token: &str) -> Option<(i64, Option<i64>)> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let number = |claim: &Value| {
        claim
            .as_i64()
            .or_else(|| claim.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    };
    Some((
        number(claims.get("exp")?)?,
        claims.get("iat").and_then(number),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON};
    use serde_json::json;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A JWT with these claims and a dummy signature.
    fn jwt(claims: &Value) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            B64URL.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            B64URL.encode(claims.to_string())
        )
    }

    fn docker_config(auths: Value) -> SourceSecret {
        SourceSecret {
            name: "regcred".into(),
            kind: DOCKER_CONFIG_JSON.into(),
            data: json!({".dockerconfigjson": B64.encode(json!({"auths": auths}).to_string())})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn times_parse_as_rfc3339_with_offsets_or_unix_seconds() {
        // (value, Unix seconds)
        let table: [(&str, Option<i64>); 10] = [
            ("2026-12-07T03:00:00Z", Some(1_796_612_400)),
            ("2026-12-07T05:00:00+02:00", Some(1_796_612_400)),
            ("2026-12-06T22:30:00-04:30", Some(1_796_612_400)),
            ("2026-12-07T03:00:00.999Z", Some(1_796_612_400)),
            ("1796612400", Some(1_796_612_400)),
            (" 1796612400\n", Some(1_796_612_400)),
            // No offset: not a point in time.
            ("2026-12-07T03:00:00", None),
            ("tomorrow", None),
            ("-5", None),
            ("", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_time(value), want, "{value:?}");
        }
    }

    #[test]
    fn jwt_exp_reads_the_payload_only() {
        let table: [(String, Option<i64>); 7] = [
            (
                jwt(&json!({"exp": 1_796_612_400, "sub": "robot"})),
                Some(1_796_612_400),
            ),
            (jwt(&json!({"exp": 1_796_612_400.5})), Some(1_796_612_400)),
            (jwt(&json!({"sub": "robot"})), None),
            (jwt(&json!({"exp": "soon"})), None),
            ("hunter2".into(), None),
            ("a.b.c".into(), None),
            // Four parts: not a JWS compact serialisation.
            (format!("{}.x", jwt(&json!({"exp": 1}))), None),
        ];
        for (token, want) in table {
            assert_eq!(jwt_exp(&token), want, "{token}");
        }
    }

    #[test]
    fn annotations_come_first_then_tokens_earliest_wins() {
        let early = jwt(&json!({"exp": 1_000}));
        let late = jwt(&json!({"exp": 2_000}));
        let auth_only = B64.encode(format!("AWS:{}", jwt(&json!({"exp": 500}))));
        // (annotations, auths, expected (at, origin) or None, problems)
        type Case = (
            Vec<(&'static str, &'static str)>,
            Value,
            Option<(i64, String)>,
            usize,
        );
        let cases: Vec<Case> = vec![
            (
                vec![
                    (EXPIRES_AT_ANNOTATION, "1970-01-01T00:50:00Z"),
                    ("expiresAt", "10"),
                ],
                json!({"ghcr.io": {"password": early}}),
                Some((3_000, "annotation pullsecret-injector/expires-at".into())),
                0,
            ),
            (
                vec![("expiresAt", "10")],
                json!({"ghcr.io": {"password": early}}),
                Some((10, "annotation expiresAt".into())),
                0,
            ),
            // An unparsable annotation is reported and the next source is read.
            (
                vec![(EXPIRES_AT_ANNOTATION, "next tuesday")],
                json!({"ghcr.io": {"password": late}, "quay.io": {"identitytoken": early}}),
                Some((1_000, "JWT exp in identitytoken of quay.io".into())),
                1,
            ),
            (
                vec![],
                json!({"a.example.com": {"registrytoken": late}, "https://u:p@b.example.com": {"password": early}}),
                Some((
                    1_000,
                    "JWT exp in password of https://REDACTED@b.example.com".into(),
                )),
                0,
            ),
            (
                vec![],
                json!({"123.dkr.ecr.eu-west-1.amazonaws.com": {"auth": auth_only}}),
                Some((
                    500,
                    "JWT exp in auth of 123.dkr.ecr.eu-west-1.amazonaws.com".into(),
                )),
                0,
            ),
            (
                vec![],
                json!({"ghcr.io": {"username": "u", "password": "not-a-jwt"}}),
                None,
                0,
            ),
            (
                vec![],
                json!({"ghcr.io": {"password": jwt(&json!({"sub": "x"}))}}),
                None,
                0,
            ),
            (vec![("expiresAt", "")], json!({}), None, 1),
        ];
        for (i, (annotations, auths, want, problems)) in cases.into_iter().enumerate() {
            let secret = docker_config(auths);
            let reading = read(
                |name| {
                    annotations
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| *v)
                },
                &secret,
            );
            let got = reading
                .expiry
                .as_ref()
                .map(|e| (e.at, e.origin.to_string()));
            assert_eq!(got, want, "case {i}");
            assert_eq!(reading.problems.len(), problems, "case {i}: {reading:?}");
        }
    }

    #[test]
    fn problems_name_the_annotation_and_never_a_token() {
        let token = jwt(&json!({"exp": 1_000, "secret": "s3cret-claim"}));
        let secret = docker_config(json!({"ghcr.io": {"password": token}}));
        let object = json!({"metadata": {"annotations": {"expiresAt": "soon"}}});
        let reading = read_json(&object, &secret);
        assert_eq!(reading.problems.len(), 1);
        let printed = format!("{reading:?} {}", reading.problems[0]);
        assert!(
            printed.contains("expiresAt") && printed.contains("\"soon\""),
            "{printed}"
        );
        assert!(
            !printed.contains(&token) && !printed.contains("s3cret"),
            "{printed}"
        );
        assert_eq!(reading.expiry.map(|e| e.at), Some(1_000));
    }

    #[test]
    fn status_and_description_against_a_clock() {
        let expiry = Expiry {
            at: 1_796_612_400,
            origin: Origin::Annotation(EXPIRES_AT_ANNOTATION),
            issued: None,
        };
        // (now, status)
        let table = [
            (expiry.at - SOON_SECONDS - 1, Status::Valid),
            (expiry.at - SOON_SECONDS, Status::ExpiresSoon),
            (expiry.at - 1, Status::ExpiresSoon),
            (expiry.at, Status::Expired),
            (expiry.at + 86_400, Status::Expired),
        ];
        for (now, want) in table {
            assert_eq!(expiry.status(now), want, "now {now}");
        }
        assert_eq!(
            expiry.describe(expiry.at - 10),
            "expires at 2026-12-07T03:00:00Z (annotation pullsecret-injector/expires-at)"
        );
        assert_eq!(
            expiry.describe(expiry.at + 10),
            "expired at 2026-12-07T03:00:00Z (annotation pullsecret-injector/expires-at)"
        );
    }

    #[test]
    fn an_issue_time_shortens_the_warning_to_a_third_of_the_lifetime() {
        let at = 1_796_612_400;
        let minted = |lifetime: i64| Expiry {
            at,
            origin: Origin::Annotation(EXPIRES_AT_ANNOTATION),
            issued: Some(at - lifetime),
        };
        // (lifetime, warning threshold): a third, never more than the hour.
        for (lifetime, want) in [
            (240, 80),
            (3600, 1200),
            (3 * 3600, 3600),
            (12 * 3600, 3600),
            (0, SOON_SECONDS),
        ] {
            assert_eq!(minted(lifetime).warn_seconds(), want, "lifetime {lifetime}");
        }
        // A four-minute credential refreshed at half its life is never warned about; one
        // not refreshed is, in its last 80 s.
        let four = minted(240);
        assert_eq!(four.status(at - 120), Status::Valid);
        assert_eq!(four.status(at - 81), Status::Valid);
        assert_eq!(four.status(at - 80), Status::ExpiresSoon);
        assert_eq!(four.status(at), Status::Expired);

        // Read from the annotation, or a token's iat; a bad one is a problem, not a guess.
        let token = jwt(&json!({"iat": at - 600, "exp": at}));
        let secret = docker_config(json!({"r.example": {"username": "u", "password": token}}));
        let from_token = read(|_| None, &secret);
        assert_eq!(from_token.expiry.map(|e| e.issued), Some(Some(at - 600)));
        let annotated = read(
            |name| match name {
                EXPIRES_AT_ANNOTATION => Some("2026-12-07T03:00:00Z"),
                ISSUED_AT_ANNOTATION => Some("2026-12-07T02:56:00Z"),
                _ => None,
            },
            &secret,
        );
        assert_eq!(annotated.expiry.map(|e| e.warn_seconds()), Some(80));
        let bad = read(
            |name| (name == ISSUED_AT_ANNOTATION).then_some("yesterday"),
            &secret,
        );
        // The token's iat stays.
        assert_eq!(bad.expiry.map(|e| e.issued), Some(Some(at - 600)));
        assert_eq!(bad.problems.len(), 1);
        assert_eq!(
            bad.problems[0].to_string(),
            "annotation pullsecret-injector/issued-at: \"yesterday\" is neither RFC 3339 nor Unix seconds; ignored"
        );
    }

    #[test]
    fn legacy_dockercfg_and_other_types() {
        let token = jwt(&json!({"exp": 42}));
        let legacy = SourceSecret {
            name: "old".into(),
            kind: DOCKER_CFG.into(),
            data: json!({".dockercfg": B64.encode(json!({"quay.io": {"password": token}}).to_string())})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        assert_eq!(read(|_| None, &legacy).expiry.map(|e| e.at), Some(42));
        let opaque = SourceSecret {
            kind: "Opaque".into(),
            ..legacy
        };
        assert_eq!(read(|_| None, &opaque).expiry, None);
    }
}
