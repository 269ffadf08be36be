//! The TPM command sequences DPS needs, over one ESAPI context: make sure the EK and SRK exist
//! at their persistent handles, import the service's activation blob as the identity key, and
//! HMAC with it (device-protocol.md §7.3, hub-dice-tpm.md §C3); make an ECDSA client key for a
//! certificate signing request and sign digests with it.
//!
//! Everything here is blocking and needs `&mut` access to the context; [`super::worker`] runs it
//! on the one thread that owns the context.

use std::str::FromStr;

use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, EncryptedSecret, HashScheme, HashcheckTicket, IdObject, MaxBuffer, Private, Public,
    PublicBuffer, Signature, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::templates::{client_key_template, Primary, CLIENT_KEY_HANDLE, ID_KEY_HANDLE};
use super::TpmError;

/// An open TPM with its EK and SRK loaded (persisted first if they were missing).
pub(crate) struct Tpm {
    ctx: Context,
    ek: KeyHandle,
    srk: KeyHandle,
    /// Marshalled TPM2B_PUBLIC of the EK and the SRK, as the service API takes them.
    ek_public: Vec<u8>,
    srk_public: Vec<u8>,
    /// ESYS handle of the persisted identity key, once looked up or imported.
    id_key: Option<ObjectHandle>,
    /// ESYS handle of the persisted client key, once looked up or made.
    client_key: Option<ObjectHandle>,
}

impl Tpm {
    /// Opens the TPM behind `tcti` and makes sure the EK and SRK are persisted.
    pub(crate) fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|error| TpmError::InvalidTcti {
            tcti: tcti.to_string(),
            error,
        })?;
        let mut ctx = Context::new(conf).map_err(|error| TpmError::Open {
            tcti: tcti.to_string(),
            error,
        })?;
        let persisted = persistent_handles(&mut ctx)?;
        let (ek, ek_public) = ensure_primary(&mut ctx, Primary::Endorsement, &persisted)?;
        let (srk, srk_public) = ensure_primary(&mut ctx, Primary::StorageRoot, &persisted)?;
        let mut load = |handle| match persisted.contains(&handle) {
            true => from_persistent(&mut ctx, handle).map(Some),
            false => Ok(None),
        };
        let id_key = load(ID_KEY_HANDLE)?;
        let client_key = load(CLIENT_KEY_HANDLE)?;
        tracing::debug!(tcti, identity_key = id_key.is_some(), "TPM opened");
        Ok(Self {
            ctx,
            ek,
            srk,
            ek_public,
            srk_public,
            id_key,
            client_key,
        })
    }

    /// The EK's marshalled TPM2B_PUBLIC.
    pub(crate) fn ek_public(&self) -> &[u8] {
        &self.ek_public
    }

    /// The SRK's marshalled TPM2B_PUBLIC.
    pub(crate) fn srk_public(&self) -> &[u8] {
        &self.srk_public
    }

    /// Imports an activation blob: ActivateCredential releases the inner wrapping key (only this
    /// TPM's EK can, and only for a credential bound to this SRK's name), Import unwraps the
    /// HMAC key under the SRK, and the loaded key replaces the one persisted at 0x81000100.
    pub(crate) fn import(&mut self, blob: &dps_tpm::ActivationBlob) -> Result<(), TpmError> {
        let malformed = |field: &'static str| move |error| TpmError::BlobField { field, error };
        let id_object = IdObject::try_from(blob.credential_blob.clone()).map_err(malformed("credentialBlob"))?;
        let secret = EncryptedSecret::try_from(blob.secret.clone()).map_err(malformed("secret"))?;
        let duplicate = Private::try_from(blob.duplicate.clone()).map_err(malformed("duplicate"))?;
        let in_sym_seed = EncryptedSecret::try_from(blob.in_sym_seed.clone()).map_err(malformed("inSymSeed"))?;
        let public = Public::unmarshall(&blob.public).map_err(malformed("identity key public area"))?;

        let inner_key = self.activate_credential(id_object, secret)?;
        let symmetric = match inner_key.len() {
            16 => SymmetricDefinitionObject::AES_128_CFB,
            32 => SymmetricDefinitionObject::AES_256_CFB,
            n => return Err(TpmError::InnerKeySize(n)),
        };
        let encryption_key = Data::try_from(inner_key).map_err(TpmError::command("wrapping the inner key"))?;
        let srk = self.srk;
        let private = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.import(
                    srk.into(),
                    Some(encryption_key),
                    public.clone(),
                    duplicate,
                    in_sym_seed,
                    symmetric,
                )
            })
            .map_err(TpmError::command_hint(
                "Import",
                ": the duplicate was not made for this TPM's storage root key, or it was tampered with",
            ))?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| ctx.load(srk, private, public))
            .map_err(TpmError::command("Load of the identity key"))?;
        let current = self.id_key.take();
        self.id_key = Some(self.persist_replacing(ID_KEY_HANDLE, current, loaded.into())?);
        tracing::debug!("identity key imported at 0x{ID_KEY_HANDLE:08x}");
        Ok(())
    }

    /// ActivateCredential(SRK, EK) under a policy session that satisfies the EK's
    /// PolicySecret(TPM_RH_ENDORSEMENT) policy; returns the inner wrapping key.
    fn activate_credential(&mut self, id_object: IdObject, secret: EncryptedSecret) -> Result<Vec<u8>, TpmError> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(TpmError::command("starting the EK policy session"))?
            .ok_or(TpmError::Command {
                what: "starting the EK policy session",
                error: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
                hint: ": the TPM returned no session",
            })?;
        let (ek, srk) = (self.ek, self.srk);
        let result = (|| {
            let policy = PolicySession::try_from(session).map_err(TpmError::command("the EK policy session"))?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(TpmError::command("PolicySecret(TPM_RH_ENDORSEMENT)"))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                    ctx.activate_credential(srk, ek, id_object, secret)
                })
                .map_err(TpmError::command_hint(
                    "ActivateCredential",
                    ": the activation blob was not made for this TPM (the enrollment's endorsement key or \
                     storage root key is another device's), or it was tampered with",
                ))
        })();
        if let Err(e) = self.ctx.flush_context(SessionHandle::from(session).into()) {
            tracing::debug!(error = %e, "flushing the EK policy session");
        }
        Ok(result?.value().to_vec())
    }

    /// Evicts what is persisted at `handle` (`current`, or found there), then persists
    /// `loaded` there; the transient `loaded` is flushed either way.
    fn persist_replacing(
        &mut self,
        handle: u32,
        current: Option<ObjectHandle>,
        loaded: ObjectHandle,
    ) -> Result<ObjectHandle, TpmError> {
        let persisted = (|| {
            let persistent = persistent(handle)?;
            let old = match current {
                Some(h) => Some(h),
                None if persistent_handles(&mut self.ctx)?.contains(&handle) => {
                    Some(from_persistent(&mut self.ctx, handle)?)
                }
                None => None,
            };
            if let Some(old) = old {
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.evict_control(Provision::Owner, old, persistent)
                    })
                    .map_err(TpmError::command("EvictControl (removing the previous key)"))?;
            }
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.evict_control(Provision::Owner, loaded, persistent)
                })
                .map_err(TpmError::command("EvictControl (persisting the key)"))
        })();
        if let Err(e) = self.ctx.flush_context(loaded) {
            tracing::debug!(error = %e, "flushing a transient key");
        }
        persisted
    }

    /// Makes a new ECDSA client key on `curve` under the SRK and persists it at 0x81000101,
    /// replacing the previous one; returns its public point (uncompressed SEC1).
    pub(crate) fn create_client_key(&mut self, curve: EccCurve) -> Result<Vec<u8>, TpmError> {
        let template = client_key_template(curve).map_err(TpmError::command("building the client key template"))?;
        let srk = self.srk;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, template, None, None, None, None)
            })
            .map_err(TpmError::command_hint(
                "Create (client key)",
                ": the TPM may not support this curve",
            ))?;
        let point = ecc_point(&created.out_public, curve)?;
        let loaded = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, created.out_private, created.out_public)
            })
            .map_err(TpmError::command("Load of the client key"))?;
        let current = self.client_key.take();
        self.client_key = Some(self.persist_replacing(CLIENT_KEY_HANDLE, current, loaded.into())?);
        tracing::debug!(handle = format_args!("0x{CLIENT_KEY_HANDLE:08x}"), "client key made");
        Ok(point)
    }

    /// The persisted client key's curve and public point, if there is one.
    pub(crate) fn client_key_public(&mut self) -> Result<Option<(EccCurve, Vec<u8>)>, TpmError> {
        let Some(key) = self.client_key else {
            return Ok(None);
        };
        let (public, _, _) = self
            .ctx
            .read_public(key.into())
            .map_err(TpmError::command("ReadPublic (client key)"))?;
        let Public::Ecc { parameters, .. } = &public else {
            return Err(TpmError::UnsupportedClientKey("a key that is not ECC".into()));
        };
        let curve = parameters.ecc_curve();
        Ok(Some((curve, ecc_point(&public, curve)?)))
    }

    /// TPM2_Sign of `digest` with the client key (ECDSA, the key's hash); returns `r` and `s`.
    pub(crate) fn sign_with_client_key(&mut self, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let key = self.client_key.ok_or(TpmError::NoClientKey)?;
        let hash = match digest.len() {
            48 => HashingAlgorithm::Sha384,
            _ => HashingAlgorithm::Sha256,
        };
        let digest = Digest::try_from(digest.to_vec()).map_err(TpmError::command("a digest to sign"))?;
        // A key that is not restricted signs any digest: the null ticket says it was not hashed
        // by this TPM, which only restricted keys ask about.
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(TpmError::command("a null hash-check ticket"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(hash),
        };
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(key.into(), digest, scheme, validation)
            })
            .map_err(TpmError::command("TPM2_Sign with the client key"))?;
        match signature {
            Signature::EcDsa(s) => Ok((s.signature_r().value().to_vec(), s.signature_s().value().to_vec())),
            _ => Err(TpmError::UnsupportedClientKey(
                "a key that signs other than ECDSA".into(),
            )),
        }
    }

    /// The RSA-2048 endorsement key certificate its manufacturer stored in NV (index
    /// `0x01C00002`, TCG EK Credential Profile), DER; `None` when the TPM has none.
    pub(crate) fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        const RSA_EK_CERTIFICATE: u32 = 0x01C0_0002;
        // Larger reads than the TPM's NV buffer fail; 512 bytes is under every TPM's.
        const CHUNK: usize = 512;
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::Handles, RSA_EK_CERTIFICATE, 1)
            .map_err(TpmError::command("GetCapability(NV indices)"))?;
        let defined =
            matches!(data, CapabilityData::Handles(list) if list.iter().any(|h| u32::from(*h) == RSA_EK_CERTIFICATE));
        if !defined {
            return Ok(None);
        }
        let index = NvIndexTpmHandle::new(RSA_EK_CERTIFICATE).map_err(TpmError::command("an NV index handle"))?;
        let handle = NvIndexHandle::from(
            self.ctx
                .tr_from_tpm_public(TpmHandle::NvIndex(index))
                .map_err(TpmError::command("loading the EK certificate's NV index"))?,
        );
        let (public, _) = self
            .ctx
            .nv_read_public(handle)
            .map_err(TpmError::command("NV_ReadPublic (EK certificate)"))?;
        let size = public.data_size();
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let (len, offset) = ((size - out.len()).min(CHUNK) as u16, out.len() as u16);
            let chunk = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_read(NvAuth::NvIndex(handle), handle, len, offset)
                })
                .map_err(TpmError::command("NV_Read (EK certificate)"))?;
            if chunk.value().is_empty() {
                break;
            }
            out.extend_from_slice(chunk.value());
        }
        Ok(Some(out))
    }

    /// TPM2_HMAC(SHA-256) of `data` with the persisted identity key.
    pub(crate) fn hmac(&mut self, data: &[u8]) -> Result<Vec<u8>, TpmError> {
        let key = self.id_key.ok_or(TpmError::NoIdentityKey)?;
        let buffer = MaxBuffer::try_from(data.to_vec()).map_err(|_| TpmError::DataTooLong {
            len: data.len(),
            max: MaxBuffer::MAX_SIZE,
        })?;
        let digest = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.hmac(key, buffer, HashingAlgorithm::Sha256)
            })
            .map_err(TpmError::command("TPM2_HMAC with the identity key"))?;
        Ok(digest.value().to_vec())
    }
}

/// The persistent handles present in the TPM.
fn persistent_handles(ctx: &mut Context) -> Result<Vec<u32>, TpmError> {
    const FIRST_PERSISTENT: u32 = 0x8100_0000;
    let mut out = Vec::new();
    let mut next = FIRST_PERSISTENT;
    loop {
        let (data, more) = ctx
            .get_capability(CapabilityType::Handles, next, 64)
            .map_err(TpmError::command("GetCapability(handles)"))?;
        let CapabilityData::Handles(list) = data else {
            break;
        };
        let handles: Vec<u32> = list.iter().map(|h| u32::from(*h)).collect();
        let Some(last) = handles.last().copied() else {
            break;
        };
        out.extend(handles);
        if !more {
            break;
        }
        next = last + 1;
    }
    Ok(out)
}

fn persistent(handle: u32) -> Result<Persistent, TpmError> {
    PersistentTpmHandle::new(handle)
        .map(Persistent::Persistent)
        .map_err(TpmError::command("a persistent handle"))
}

/// An ESYS handle for the object persisted at `handle`.
fn from_persistent(ctx: &mut Context, handle: u32) -> Result<ObjectHandle, TpmError> {
    let Persistent::Persistent(h) = persistent(handle)?;
    ctx.tr_from_tpm_public(TpmHandle::Persistent(h))
        .map_err(TpmError::command("loading a persistent handle"))
}

/// The key at `which`'s persistent handle, created from its template and persisted when absent;
/// with its marshalled TPM2B_PUBLIC.
fn ensure_primary(ctx: &mut Context, which: Primary, persisted: &[u32]) -> Result<(KeyHandle, Vec<u8>), TpmError> {
    let handle = if persisted.contains(&which.handle()) {
        from_persistent(ctx, which.handle())?
    } else {
        let hierarchy = match which {
            Primary::Endorsement => Hierarchy::Endorsement,
            Primary::StorageRoot => Hierarchy::Owner,
        };
        let template = which.template().map_err(TpmError::command("building a key template"))?;
        let created = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(hierarchy, template, None, None, None, None)
            })
            .map_err(TpmError::command_hint(
                "CreatePrimary",
                ": the hierarchy may have a password set (only an empty one is supported)",
            ))?;
        let transient: ObjectHandle = created.key_handle.into();
        let persistent = persistent(which.handle())?;
        let persisted = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(Provision::Owner, transient, persistent)
        });
        if let Err(e) = ctx.flush_context(transient) {
            tracing::debug!(error = %e, "flushing the transient primary key");
        }
        let persisted = persisted.map_err(TpmError::command("EvictControl (persisting a primary key)"))?;
        tracing::info!(
            key = which.name(),
            handle = format_args!("0x{:08x}", which.handle()),
            "created and persisted"
        );
        persisted
    };
    let key = KeyHandle::from(handle);
    let (public, _, _) = ctx.read_public(key).map_err(TpmError::command("ReadPublic"))?;
    let tpm2b = PublicBuffer::try_from(public)
        .and_then(|b| b.marshall())
        .map_err(TpmError::command("marshalling a public area"))?;
    Ok((key, tpm2b))
}

/// The uncompressed SEC1 point (`04 || x || y`) of an ECC public area on `curve`, each
/// coordinate left-padded to the curve's size (a TPM may drop leading zero bytes).
fn ecc_point(public: &Public, curve: EccCurve) -> Result<Vec<u8>, TpmError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(TpmError::UnsupportedClientKey("a key that is not ECC".into()));
    };
    let size = match curve {
        EccCurve::NistP256 => 32,
        EccCurve::NistP384 => 48,
        other => return Err(TpmError::UnsupportedClientKey(format!("{other:?}"))),
    };
    let mut point = vec![0x04];
    for coordinate in [unique.x().value(), unique.y().value()] {
        if coordinate.len() > size {
            return Err(TpmError::UnsupportedClientKey(format!(
                "a {}-byte coordinate on a {size}-byte curve",
                coordinate.len()
            )));
        }
        point.resize(point.len() + size - coordinate.len(), 0);
        point.extend_from_slice(coordinate);
    }
    Ok(point)
}
