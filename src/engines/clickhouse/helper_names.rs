//! The names of the tables an s3-policy move creates beside a table `<t>`, in one
//! place, so that each mode sees the other's unfinished work (a plan switched from one
//! mode to the other between runs must not leave rows or backups behind).

/// The new table of a copy (default; `settings.new_table` may name another).
pub fn new_table(table: &str) -> String {
    format!("{table}__flow_new")
}

/// Where a copy freezes and compares a source partition before dropping it.
pub fn quarantine(table: &str) -> String {
    format!("{table}__flow_quarantine")
}

/// The tables a copy-mode move with the default new table leaves while unfinished.
pub fn copy_mode_tables(table: &str) -> [String; 2] {
    [new_table(table), quarantine(table)]
}

/// The prefix of the marker tables that record an in-place move's FREEZE backups.
pub fn frozen_markers_prefix(table: &str) -> String {
    format!("{table}__flow_frozen_")
}
