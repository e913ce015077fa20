//! Making one media item of a row ready for the model call: its kind from the extension, and
//! for a local file the checks, the hash and the upload, or the one re-upload that replaces
//! a URL the model called invalid.
//!
//! [`Worker::prepare`] is run once per item and knows nothing of the row's other items; the
//! row decides when an item is prepared again (see [`Worker::run_row`]).

use super::Worker;
use crate::dashscope::{Media, media::audio_format};
use crate::manifest::{MediaRef, Source};
use crate::output::UploadOutcome;
use crate::pipeline::checks;
use crate::pipeline::failure::Failure;
use crate::pipeline::uploads::RowLog;

/// One media item of a row, ready for the model.
pub(super) struct Prepared {
    pub media: Media,
    /// How the item got its URL: `none` for a URL the row gave.
    pub upload: UploadOutcome,
    /// An `http(s)://` URL the row gave: public, not temporary storage.
    public: bool,
}

impl Prepared {
    /// Whether this run put the item in temporary storage (uploaded it, or took the URL of an
    /// upload of this run or an earlier one), so that a URL the model rejects can be replaced.
    pub fn uploaded(&self) -> bool {
        self.upload != UploadOutcome::None
    }

    /// What the results line's `oss_url` says: the temporary URL the model was given, empty
    /// for a public URL.
    pub fn oss_url(&self) -> &str {
        if self.public { "" } else { &self.media.url }
    }
}

impl Worker {
    /// Makes `item` ready for a call to `model`: checks it, and uploads a local file unless
    /// this run already did. With `rejected`, the URL the model called invalid when `item`
    /// was last prepared, a local file is uploaded once more in its place; a URL the row gave
    /// is used as it is, since nothing here could make it valid.
    pub(super) async fn prepare(
        &self,
        model: &str,
        item: &MediaRef,
        rejected: Option<&str>,
        log: &mut RowLog,
    ) -> Result<Prepared, Failure> {
        let path = match &item.source {
            Source::Local(path) => path,
            Source::Oss(url) | Source::Http(url) => {
                let media = checks::url_media(url, &item.file)?;
                return Ok(Prepared {
                    media,
                    upload: UploadOutcome::None,
                    public: matches!(item.source, Source::Http(_)),
                });
            }
        };
        // The file before its name, as `validate` judges it: a folder named `media` is a
        // folder.
        let metadata = checks::local_file(path)?;
        let kind = checks::media_kind(&item.source, &item.file)?;
        let mut content = self.uploads.content(model, path, &metadata).await?;
        self.still_running()?;
        let up = self
            .uploads
            .ensure(model, path, &mut content, rejected, log)
            .await?;
        Ok(Prepared {
            media: Media {
                kind,
                url: up.url,
                format: audio_format(path),
            },
            upload: up.outcome,
            public: false,
        })
    }
}
