//! Keys, ids and authenticated encryption.
//!
//! ## Keys
//! A repository has one random 32-byte *master secret*. Two independent keys are derived from
//! it with BLAKE3's key-derivation mode: the *encryption key* and the *id key*. Chunk and tree
//! ids are BLAKE3 keyed with the id key, so the store cannot confirm guesses about content
//! from ids. The master secret is stored only wrapped: each key file seals it under a key
//! derived from a password with Argon2id (parameters and salt stored in the key file).
//!
//! ## Sealing (every blob and every metadata object)
//! `sealed = 0x01 | salt[16] | nonce[12] | AES-256-GCM(subkey, nonce, aad, plaintext) | tag[16]`
//! with `subkey = BLAKE3-keyed(encryption key, salt)`. Each message is encrypted under its own
//! random 128-bit-salted subkey and a random 96-bit nonce, the same idea as XAES-256-GCM's
//! extended nonces. GCM's limits apply per key: 2^32 random nonces per key keeps the
//! collision risk under 2^-32, and here each subkey encrypts exactly one message. A repeat
//! needs a salt *and* nonce collision, 224 random bits: with 2^48 blobs (far beyond billions)
//! the probability is below 2^-127. The cost is one BLAKE3 call and one AES key schedule per
//! message (well under a microsecond), negligible next to a 1 MiB chunk.
//!
//! The associated data binds context: for blobs the blob type and id (so a blob cannot be
//! served for another id), for objects the object kind (so an index cannot pose as a
//! snapshot). A failed tag check means the bytes were altered or the key is wrong; it is
//! reported, never ignored.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use podvault_proto::key::KdfParams;
use podvault_proto::BlobId;
use rand::RngCore;

/// Scheme byte opening every sealed message.
const SCHEME_V1: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes before the ciphertext.
pub const SEAL_HEADER: usize = 1 + SALT_LEN + NONCE_LEN;
/// Total bytes a seal adds to a plaintext.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER + TAG_LEN;

/// Why a sealed message could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Too short or an unknown scheme byte.
    #[error("not a sealed message (bad length or scheme)")]
    Malformed,
    /// Authentication failed: altered bytes, wrong key, or wrong context.
    #[error("authentication failed (data altered or wrong key)")]
    Authentication,
}

/// The unwrapped repository key material.
#[derive(Clone)]
pub struct MasterKey {
    secret: [u8; 32],
    encryption: [u8; 32],
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// Derives the working keys from a master secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        MasterKey {
            secret,
            encryption: blake3::derive_key("podvault 2026 repository encryption key v1", &secret),
            id: blake3::derive_key("podvault 2026 repository blob id key v1", &secret),
        }
    }

    /// The master secret (only ever stored sealed).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Keyed BLAKE3 id of a blob's plaintext.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id, data).as_bytes())
    }

    /// Seals `plaintext` (see the module docs).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.encryption, aad, plaintext.len(), |out| {
            out.extend_from_slice(plaintext)
        })
    }

    /// Seals a plaintext that `fill` appends to the buffer, avoiding an intermediate copy.
    /// `len_hint` is the expected plaintext length (for allocation only).
    pub fn seal_with(
        &self,
        aad: &[u8],
        len_hint: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        seal_with(&self.encryption, aad, len_hint, fill)
    }

    /// Opens a sealed message, returning the plaintext.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.encryption, aad, sealed)
    }
}

fn subkey(key: &[u8; 32], salt: &[u8]) -> Aes256Gcm {
    let k = blake3::keyed_hash(key, salt);
    Aes256Gcm::new(k.as_bytes().into())
}

fn seal_with(
    key: &[u8; 32],
    aad: &[u8],
    len_hint: usize,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + len_hint);
    out.push(SCHEME_V1);
    out.resize(SEAL_HEADER, 0);
    rand::rng().fill_bytes(&mut out[1..SEAL_HEADER]);
    fill(&mut out);
    let (head, body) = out.split_at_mut(SEAL_HEADER);
    let cipher = subkey(key, &head[1..1 + SALT_LEN]);
    let nonce = Nonce::from_slice(&head[1 + SALT_LEN..]);
    // Encryption only fails for plaintexts beyond GCM's 64 GiB limit; blobs are far smaller.
    let tag = cipher
        .encrypt_in_place_detached(nonce, aad, body)
        .expect("plaintext within AES-GCM length limit");
    out.extend_from_slice(&tag);
    out
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD || sealed[0] != SCHEME_V1 {
        return Err(CryptoError::Malformed);
    }
    let (head, rest) = sealed.split_at(SEAL_HEADER);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = subkey(key, &head[1..1 + SALT_LEN]);
    let mut plain = ct.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&head[1 + SALT_LEN..]),
            aad,
            &mut plain,
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(plain)
}

/// Argon2id cost settings for new key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfCost {
    /// 32 MiB, 6 passes: about a quarter second on a small node, well above OWASP's Argon2id
    /// floor (19 MiB × 2). The memory × passes product — what each guess costs an attacker
    /// with the key file — equals that of 64 MiB × 3, at half the peak memory: every command
    /// pays this memory once when it opens the repository, and on a node that is the
    /// agent's largest single allocation.
    fn default() -> Self {
        KdfCost {
            memory_kib: 32 * 1024,
            iterations: 6,
            parallelism: 1,
        }
    }
}

fn derive_password_key(password: &[u8], kdf: &KdfParams) -> Result<[u8; 32], String> {
    if kdf.algorithm != "argon2id" {
        return Err(format!("unsupported KDF {:?}", kdf.algorithm));
    }
    let salt = hex::decode(&kdf.salt).map_err(|_| "KDF salt is not hex".to_owned())?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| format!("invalid KDF parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, &salt, &mut out)
        .map_err(|e| format!("key derivation failed: {e}"))?;
    Ok(out)
}

/// Wraps the master secret under a password; returns the KDF parameters and the sealed secret.
pub fn wrap_master_key(
    master: &MasterKey,
    password: &[u8],
    cost: KdfCost,
) -> Result<(KdfParams, Vec<u8>), String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let kdf = KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: cost.memory_kib,
        iterations: cost.iterations,
        parallelism: cost.parallelism,
        salt: hex::encode(salt),
    };
    let kek = derive_password_key(password, &kdf)?;
    let sealed = seal_with(&kek, podvault_proto::ObjectKind::Key.aad(), 32, |o| {
        o.extend_from_slice(master.secret())
    });
    Ok((kdf, sealed))
}

/// Unwraps a master secret; `Ok(None)` when the password does not fit this key.
pub fn unwrap_master_key(
    password: &[u8],
    kdf: &KdfParams,
    sealed: &[u8],
) -> Result<Option<MasterKey>, String> {
    let kek = derive_password_key(password, kdf)?;
    match open_with(&kek, podvault_proto::ObjectKind::Key.aad(), sealed) {
        Ok(secret) => {
            let secret: [u8; 32] = secret
                .try_into()
                .map_err(|_| "wrapped master key has the wrong length".to_owned())?;
            Ok(Some(MasterKey::from_secret(secret)))
        }
        Err(CryptoError::Authentication) => Ok(None),
        Err(CryptoError::Malformed) => Err("wrapped master key is malformed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"ctx", b"hello world");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(k.open(b"ctx", &sealed).unwrap(), b"hello world");
        assert_eq!(k.open(b"other", &sealed), Err(CryptoError::Authentication));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(k.open(b"ctx", &bad).is_err(), "flip at {i} undetected");
        }
        assert_eq!(k.open(b"ctx", &sealed[..10]), Err(CryptoError::Malformed));
        let other = MasterKey::generate();
        assert_eq!(
            other.open(b"ctx", &sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn seals_are_randomised_and_ids_are_keyed() {
        let k = MasterKey::from_secret([1; 32]);
        assert_ne!(k.seal(b"", b"x"), k.seal(b"", b"x"));
        assert_eq!(
            k.blob_id(b"abc"),
            MasterKey::from_secret([1; 32]).blob_id(b"abc")
        );
        assert_ne!(
            k.blob_id(b"abc"),
            MasterKey::from_secret([2; 32]).blob_id(b"abc")
        );
        assert_ne!(k.blob_id(b"abc").0, *blake3::hash(b"abc").as_bytes());
    }

    #[test]
    fn password_wrapping() {
        let k = MasterKey::generate();
        let (kdf, sealed) = wrap_master_key(&k, b"pw", CHEAP).unwrap();
        let back = unwrap_master_key(b"pw", &kdf, &sealed).unwrap().unwrap();
        assert_eq!(back.secret(), k.secret());
        assert!(unwrap_master_key(b"wrong", &kdf, &sealed)
            .unwrap()
            .is_none());
        let mut bad = kdf.clone();
        bad.algorithm = "scrypt".into();
        assert!(unwrap_master_key(b"pw", &bad, &sealed).is_err());
    }
}
