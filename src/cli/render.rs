//! `kproxy render`: the exact ruleset, a summary table, or JSON for a set of objects.
//!
//! Owns: the render command's arguments and output. Must not: touch the kernel.

use clap::{Args, ValueEnum};

use super::input::{prepare, Input};
use super::Failure;
use crate::nft::text;
use crate::report;

#[derive(Args, Debug)]
pub(crate) struct RenderArgs {
    #[command(flatten)]
    input: Input,
    /// nft: the exact ruleset (loadable with `nft -f`); summary: a table per service port;
    /// json: model, warnings and ruleset.
    #[arg(short = 'o', long, value_enum, default_value_t = RenderOutput::Nft)]
    output: RenderOutput,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RenderOutput {
    Nft,
    Summary,
    Json,
}

pub(crate) fn cmd_render(a: RenderArgs) -> Result<(), Failure> {
    let p = prepare(&a.input)?;
    match a.output {
        RenderOutput::Nft => print!("{}", text::ruleset(&p.ruleset)),
        RenderOutput::Summary => print!("{}", report::summary(&p.model, &p.warnings)),
        RenderOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&p.model, &p.warnings, &p.ruleset))
                .expect("json")
        ),
    }
    Ok(())
}
