//! The lock of a table that a storage-policy move works on: a marker table
//! `<table>__flow_lock` whose comment names the plan. Creating it is atomic on the
//! server, so two plans never move one table at once; a second plan is refused with
//! the marker's name, to drop if the first run is dead.

use minijinja::context;

use super::{qualified, Ch};
use crate::task::TaskFailure;

/// The lock of one table for one plan.
pub struct TableLock<'a> {
    pub ch: &'a Ch,
    pub database: &'a str,
    pub table: &'a str,
    /// Who takes it (the plan name).
    pub holder: &'a str,
}

impl TableLock<'_> {
    /// The marker table's name inside the database.
    pub fn marker_name(table: &str) -> String {
        format!("{table}__flow_lock")
    }

    fn comment(&self) -> String {
        format!("flow plan {}", self.holder)
    }

    fn held_by(&self, holder: &str) -> TaskFailure {
        let marker = qualified(self.database, &Self::marker_name(self.table));
        TaskFailure::permanent(format!(
            "s3-policy: {} is being moved by `{holder}` (marker table {marker}); if that run \
             is dead, drop {marker} and resume",
            qualified(self.database, self.table)
        ))
    }

    /// Takes the lock for this plan (already held by it: fine), or fails naming its
    /// holder.
    pub async fn take(&self) -> Result<(), TaskFailure> {
        let name = Self::marker_name(self.table);
        let comment = self.comment();
        let created = self
            .ch
            .run(
                &format!("lock {}", qualified(self.database, self.table)),
                "create_marker",
                context! {
                    table => qualified(self.database, &name), if_not_exists => false,
                    comment => &comment,
                },
            )
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code == Some(57) => {
                let holder = super::copy::marker_comment(self.ch, self.database, &name)
                    .await?
                    .unwrap_or_default();
                if holder == comment {
                    Ok(())
                } else {
                    Err(self.held_by(&holder))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fails when another plan holds the lock; `marker_comment` is the marker's
    /// comment as a survey of the tables read it (None: no marker, a free table stays
    /// free — only prepare takes the lock, so a step repeated after the end leaves none).
    pub fn check(&self, marker_comment: Option<&str>) -> Result<(), TaskFailure> {
        match marker_comment {
            Some(holder) if holder != self.comment() => Err(self.held_by(holder)),
            _ => Ok(()),
        }
    }

    pub async fn release(&self) -> Result<(), TaskFailure> {
        self.ch
            .run(
                "release the table lock",
                "drop_table",
                context! { table => qualified(self.database, &Self::marker_name(self.table)) },
            )
            .await
            .map_err(Into::into)
    }
}
