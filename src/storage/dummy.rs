//! The `dummy` driver: a volume that only records the keys its definition
//! gives, as the original Geats' did. It provides nothing and touches no
//! disk.

use super::{Provides, StorageError, Volume, VolumeCtx, VolumeUsage};

/// A recorded-only volume.
#[derive(Debug)]
pub struct DummyVolume {
    record: serde_json::Value,
}

impl DummyVolume {
    /// Build from the context; accepts any option.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<DummyVolume, StorageError> {
        ctx.claim_everything();
        let mut record = serde_json::to_value(ctx.spec).unwrap_or_default();
        if let Some(m) = record.as_object_mut() {
            m.insert("driver".into(), "dummy".into());
        }
        Ok(DummyVolume { record })
    }
}

impl Volume for DummyVolume {
    fn define(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn activate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn undefine(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn format(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn is_active(&self) -> bool {
        false
    }
    fn provides(&self) -> Provides {
        Provides::nothing()
    }
    fn exists(&self) -> bool {
        true
    }
    fn record(&self) -> serde_json::Value {
        self.record.clone()
    }
    fn usage(&self) -> VolumeUsage {
        VolumeUsage::default()
    }
    fn describe(&self) -> String {
        "dummy volume (recorded only)".into()
    }
    /// A snapshot of nothing is nothing: the manager's records are all
    /// there is (for tests and demos of the snapshot actions).
    fn snapshot(&mut self, _name: &crate::names::SnapshotName) -> Result<Option<u64>, StorageError> {
        Ok(Some(0))
    }
    fn restore(&mut self, _name: &crate::names::SnapshotName) -> Result<(), StorageError> {
        Ok(())
    }
    fn delete_snapshot(&mut self, _name: &crate::names::SnapshotName) -> Result<(), StorageError> {
        Ok(())
    }
}

impl super::Driver for DummyVolume {
    const NAME: &'static str = "dummy";
    const DEFAULT_ROOT: Option<&'static str> = None;

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        DummyVolume::new(ctx)
    }
}
