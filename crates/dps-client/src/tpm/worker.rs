//! The one thread that owns the TPM context.
//!
//! Why a thread: an ESAPI context is not thread-safe and tss-esapi's `Context` is not `Sync`,
//! while a [`SecurityProvider`](crate::SecurityProvider) is shared across tasks. Rather than
//! lock a context that may hold C pointers across threads, the context is created, used and
//! dropped on one thread, and callers send it closures. Commands are serialized, which a TPM
//! needs anyway; a call blocks its caller for the TPM's time (milliseconds for an HMAC, longer
//! for the RSA operations of an import), so async code runs imports on a blocking thread.

use std::sync::mpsc;
use std::thread;

use super::commands::Tpm;
use super::TpmError;

type Job = Box<dyn FnOnce(&mut Tpm) + Send>;

/// Handle to the TPM thread; the thread ends (closing the context) when this is dropped.
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    /// Opens the TPM at `tcti` on a new thread; fails if the TPM cannot be opened.
    pub(crate) fn open(tcti: &str) -> Result<Self, TpmError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let tcti = tcti.to_string();
        thread::Builder::new()
            .name("dps-tpm".into())
            .spawn(move || match Tpm::open(&tcti) {
                Ok(mut tpm) => {
                    let _ = ready_tx.send(Ok(()));
                    for job in rx {
                        job(&mut tpm);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|_| TpmError::WorkerGone)?;
        ready_rx.recv().map_err(|_| TpmError::WorkerGone)??;
        Ok(Self { jobs })
    }

    /// Runs `f` on the TPM thread and waits for its result.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tpm) -> Result<R, TpmError> + Send + 'static,
    ) -> Result<R, TpmError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |tpm| {
                let _ = tx.send(f(tpm));
            }))
            .map_err(|_| TpmError::WorkerGone)?;
        rx.recv().map_err(|_| TpmError::WorkerGone)?
    }
}
