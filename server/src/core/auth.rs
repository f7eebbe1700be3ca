//! Device credentials: a JWT signed with HS256 whose `sub` is the device id and whose `exp` has not
//! passed (as Centrifugo and Mercure use them), checked during the upgrade or long-poll request
//! only: no bytes per connection. The token comes as `?token=…`, as `Authorization: Bearer …`, or
//! (browsers cannot set headers) as a `Sec-WebSocket-Protocol` value `bearer.<token>`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Why a credential was refused (each counted, and answered `401` with this reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    /// Signed with our key, but its claims are not what we check (`sub`, `exp`; no `aud`):
    /// counted with the malformed ones.
    BadClaims,
    Expired,
    /// Its `nbf` (not before) is still ahead: counted with the expired ones.
    NotYetValid,
    BadSignature,
    /// Valid, but for another device id.
    WrongDevice,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "a device id needs a token (?token=, Authorization: Bearer, or the subprotocol bearer.<token>)"
            }
            Refusal::Malformed => "the token is not a JWT signed with HS256",
            Refusal::BadClaims => "the token's claims are not a string sub and a numeric exp (or it names an aud)",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet (nbf)",
            Refusal::BadSignature => "the token's signature does not verify",
            Refusal::WrongDevice => "the token is for another device id",
        }
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// The key devices' tokens are checked with.
#[derive(Clone)]
pub struct DeviceAuth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceAuth(HS256, key hidden)")
    }
}

impl DeviceAuth {
    /// A key of at least 16 bytes (shorter HMAC secrets are guessable).
    pub fn hs256(secret: &[u8]) -> Result<DeviceAuth, String> {
        if secret.len() < 16 {
            return Err(format!(
                "the device key is {} bytes: at least 16 are needed",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret).map_err(|e| format!("device key: {e}"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        // No allowance for clock skew: the issuer's and our clocks are NTP-synchronised servers.
        validation.leeway = 0;
        Ok(DeviceAuth { key, validation })
    }

    /// Check `token` for device `device`.
    pub fn check(&self, token: Option<&[u8]>, device: &[u8]) -> Result<(), Refusal> {
        let token = token.ok_or(Refusal::Missing)?;
        let token = std::str::from_utf8(token).map_err(|_| Refusal::Malformed)?;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) if data.claims.sub.as_bytes() == device => Ok(()),
            Ok(_) => Err(Refusal::WrongDevice),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidAudience => Refusal::BadClaims,
                ErrorKind::InvalidSignature => Refusal::BadSignature,
                _ => Refusal::Malformed,
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    /// A token for `sub` expiring at `exp` (unix seconds), signed with `secret` (also for the
    /// core's tests).
    pub(crate) fn token(secret: &[u8], sub: &str, exp: u64) -> String {
        signed(secret, serde_json::json!({ "sub": sub, "exp": exp }))
    }

    /// Any claims, signed with HS256 and `secret`.
    fn signed(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    const K1: &[u8] = b"a device key of 32 bytes, for us";

    #[test]
    fn every_reason_fits_a_rejection() {
        use Refusal::*;
        for r in [
            Missing,
            Malformed,
            BadClaims,
            Expired,
            NotYetValid,
            BadSignature,
            WrongDevice,
        ] {
            assert!(r.reason().len() <= crate::core::http::MAX_REASON, "{r:?}");
        }
    }

    #[test]
    fn a_short_key_is_refused() {
        assert!(DeviceAuth::hs256(b"short").is_err());
    }

    #[test]
    fn each_refusal_is_told_apart() {
        let auth = DeviceAuth::hs256(K1).unwrap();
        let good = token(K1, "dev-1", now() + 60);
        assert_eq!(auth.check(Some(good.as_bytes()), b"dev-1"), Ok(()));
        assert_eq!(auth.check(None, b"dev-1"), Err(Refusal::Missing));
        assert_eq!(auth.check(Some(b"not.a.jwt"), b"dev-1"), Err(Refusal::Malformed));
        assert_eq!(auth.check(Some(&[0xff, 0xfe]), b"dev-1"), Err(Refusal::Malformed));
        assert_eq!(auth.check(Some(good.as_bytes()), b"dev-2"), Err(Refusal::WrongDevice));
        let old = token(K1, "dev-1", now() - 10);
        assert_eq!(auth.check(Some(old.as_bytes()), b"dev-1"), Err(Refusal::Expired));
        let early = signed(
            K1,
            serde_json::json!({ "sub": "dev-1", "exp": now() + 600, "nbf": now() + 300 }),
        );
        assert_eq!(auth.check(Some(early.as_bytes()), b"dev-1"), Err(Refusal::NotYetValid));
        let forged = token(b"another key of 16+ bytes", "dev-1", now() + 60);
        assert_eq!(
            auth.check(Some(forged.as_bytes()), b"dev-1"),
            Err(Refusal::BadSignature)
        );
        // Another algorithm, or none, is refused whatever it claims.
        // {"alg":"none","typ":"JWT"} . {"sub":"dev-1","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJkZXYtMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(auth.check(Some(none.as_bytes()), b"dev-1"), Err(Refusal::Malformed));
        let no_exp = signed(K1, serde_json::json!({ "sub": "dev-1" }));
        assert_eq!(auth.check(Some(no_exp.as_bytes()), b"dev-1"), Err(Refusal::BadClaims));
        let with_aud = signed(
            K1,
            serde_json::json!({ "sub": "dev-1", "exp": now() + 60, "aud": "another service" }),
        );
        assert_eq!(auth.check(Some(with_aud.as_bytes()), b"dev-1"), Err(Refusal::BadClaims));
    }
}
