//! `flow schema`: the JSON Schema of plan files, for editor completion and checks.

use super::EXIT_OK;
use crate::plan::schema::PlanFile;

pub fn schema_json() -> String {
    let schema = schemars::schema_for!(PlanFile);
    serde_json::to_string_pretty(&schema).expect("schemas serialize")
}

pub fn run() -> u8 {
    super::emit(&(schema_json() + "\n"));
    EXIT_OK
}
