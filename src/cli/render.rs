//! `kproxy render`: the exact ruleset, a summary table, or JSON for a set of objects.
//!
//! Owns: the render command's arguments and output. Must not: touch the kernel.

use std::fmt;
use std::io::{self, BufWriter, StdoutLock, Write};

use clap::{Args, ValueEnum};

use super::input::{prepare, prepare_ruleset, Input};
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
    match a.output {
        RenderOutput::Nft => {
            // Only the ruleset is printed: built a run of services at a time and streamed,
            // so a 50k-service render never holds the whole model or the whole text.
            let (_, ruleset) = prepare_ruleset(&a.input)?;
            print_streamed(|out| text::write_ruleset(&ruleset, out))
        }
        RenderOutput::Summary => {
            let p = prepare(&a.input)?;
            print!("{}", report::summary(&p.model, &p.warnings));
            Ok(())
        }
        RenderOutput::Json => {
            let p = prepare(&a.input)?;
            let json = report::json(&p.model, &p.warnings, &p.ruleset);
            println!("{}", serde_json::to_string_pretty(&json).expect("json"));
            Ok(())
        }
    }
}

/// Writes what `write` produces to stdout through a buffer, piece by piece. A closed
/// stdout (`kproxy render | head`) ends quietly; other write errors are reported.
fn print_streamed(
    write: impl FnOnce(&mut IoAsFmt<BufWriter<StdoutLock<'static>>>) -> fmt::Result,
) -> Result<(), Failure> {
    let mut out = IoAsFmt {
        inner: BufWriter::new(io::stdout().lock()),
        error: None,
    };
    let written = write(&mut out).and_then(|()| {
        out.inner.flush().map_err(|e| {
            out.error = Some(e);
            fmt::Error
        })
    });
    match (written, out.error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        (Err(_), e) => Err(Failure {
            code: 1,
            message: format!(
                "writing the ruleset: {}",
                e.map_or_else(|| "formatting failed".to_string(), |e| e.to_string())
            ),
        }),
    }
}

/// `fmt::Write` over an `io::Write`, keeping the I/O error `fmt::Error` cannot carry.
struct IoAsFmt<W: Write> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> fmt::Write for IoAsFmt<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.inner.write_all(s.as_bytes()).map_err(|e| {
            self.error = Some(e);
            fmt::Error
        })
    }
}
