//! The provisioning steps of `packer/cryptoserver.pkr.hcl`, read from the template
//! itself: the image built here runs exactly what Packer runs on AWS, in its order.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hcl::{Block, Body, Expression};

/// One `provisioner` block of the template's `build`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// `provisioner "file"`: copies a file of this machine into the image.
    Upload {
        source: PathBuf,
        destination: String,
    },
    /// `provisioner "shell"`: runs a script as the build user, through its
    /// `execute_command` (Packer's default when the block has none).
    Shell {
        script: Script,
        execute_command: String,
        skip_clean: bool,
    },
}

/// What a shell provisioner runs: lines Packer joins into a `sh -e` script, or a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Script {
    Inline(Vec<String>),
    File(PathBuf),
}

/// Packer's shell provisioner, when a block sets none of these.
const DEFAULT_EXECUTE_COMMAND: &str = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
const INLINE_SHEBANG: &str = "#!/bin/sh -e";

/// The template's values the steps name: `${path.root}` and `${local.dist_tarball}`.
pub struct Template {
    pub path: PathBuf,
    pub dist_tarball: PathBuf,
}

impl Template {
    /// The `provisioner` blocks of the template's `build`, in order.
    pub fn steps(&self) -> anyhow::Result<Vec<Step>> {
        let body = self.body()?;
        let build = blocks(&body, "build")
            .next()
            .with_context(|| format!("{} has no build block", self.path.display()))?;
        blocks(&build.body, "provisioner")
            .map(|block| self.step(block))
            .collect()
    }

    /// The default of the template's variable `name`, a string.
    pub fn variable_default(&self, name: &str) -> anyhow::Result<String> {
        let body = self.body()?;
        let variable = blocks(&body, "variable")
            .find(|block| block.labels.first().map(|label| label.as_str()) == Some(name))
            .with_context(|| format!("{} has no variable {name}", self.path.display()))?;
        let default = attribute(variable, "default").with_context(|| {
            format!("variable {name} of {} has no default", self.path.display())
        })?;
        self.text(default)
    }

    fn body(&self) -> anyhow::Result<Body> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        hcl::parse(&text).with_context(|| format!("{} is not valid HCL", self.path.display()))
    }

    fn step(&self, block: &Block) -> anyhow::Result<Step> {
        let kind = block.labels.first().map(|label| label.as_str());
        let text_of = |name: &str| {
            attribute(block, name)
                .map(|value| self.text(value))
                .transpose()
        };
        match kind {
            Some("file") => Ok(Step::Upload {
                source: PathBuf::from(text_of("source")?.context("a file provisioner without source")?),
                destination: text_of("destination")?
                    .context("a file provisioner without destination")?,
            }),
            Some("shell") => {
                let script = match (attribute(block, "inline"), text_of("script")?) {
                    (Some(Expression::Array(lines)), None) => Script::Inline(
                        lines
                            .iter()
                            .map(|line| self.text(line))
                            .collect::<anyhow::Result<_>>()?,
                    ),
                    (None, Some(script)) => Script::File(PathBuf::from(script)),
                    _ => bail!("a shell provisioner has either a list of inline lines or a script"),
                };
                let skip_clean = match attribute(block, "skip_clean") {
                    None => false,
                    Some(Expression::Bool(value)) => *value,
                    Some(other) => bail!("skip_clean is {other}, not true or false"),
                };
                Ok(Step::Shell {
                    script,
                    execute_command: text_of("execute_command")?
                        .unwrap_or_else(|| DEFAULT_EXECUTE_COMMAND.to_owned()),
                    skip_clean,
                })
            }
            _ => bail!(
                "{} has a provisioner {kind:?}: the image build runs only file and shell provisioners",
                self.path.display()
            ),
        }
    }

    /// A string of the template with the references the image build knows resolved.
    fn text(&self, value: &Expression) -> anyhow::Result<String> {
        let raw = match value {
            Expression::String(text) => text.clone(),
            Expression::TemplateExpr(template) => template.to_string(),
            // A reference such as local.dist_tarball: resolved like "${local.dist_tarball}".
            Expression::Traversal(_) | Expression::Variable(_) => format!("${{{value}}}"),
            other => bail!("{other} is not a string"),
        };
        let root = self.path.parent().unwrap_or(Path::new("."));
        let resolved = raw
            .replace("${path.root}", &root.to_string_lossy())
            .replace(
                "${local.dist_tarball}",
                &self.dist_tarball.to_string_lossy(),
            );
        if let Some(start) = resolved.find("${") {
            bail!(
                "{} uses {} in a provisioner: the image build resolves only ${{path.root}} and \
                 ${{local.dist_tarball}}; teach xtask/src/image/packer.rs the new one",
                self.path.display(),
                &resolved[start
                    ..resolved[start..]
                        .find('}')
                        .map_or(resolved.len(), |end| start + end + 1)]
            );
        }
        Ok(resolved)
    }
}

impl Step {
    /// The shell command that runs the script uploaded to `path` with `vars` set.
    pub fn command(execute_command: &str, path: &str, vars: &str) -> String {
        execute_command
            .replace("{{ .Path }}", path)
            .replace("{{.Path}}", path)
            .replace("{{ .Vars }}", vars)
            .replace("{{.Vars}}", vars)
    }
}

impl Script {
    /// The file Packer uploads: the inline lines as one `sh -e` script, or the script file.
    pub fn contents(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Script::Inline(lines) => {
                Ok(format!("{INLINE_SHEBANG}\n{}\n", lines.join("\n")).into_bytes())
            }
            Script::File(path) => {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Upload {
                source,
                destination,
            } => {
                let name = source.file_name().unwrap_or_default().to_string_lossy();
                write!(f, "file {name} -> {destination}")
            }
            Step::Shell {
                script: Script::Inline(lines),
                ..
            } => {
                write!(f, "shell inline ({} lines)", lines.len())
            }
            Step::Shell {
                script: Script::File(path),
                ..
            } => {
                write!(
                    f,
                    "shell {}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                )
            }
        }
    }
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks()
        .filter(move |block| block.identifier.as_str() == identifier)
}

fn attribute<'a>(block: &'a Block, name: &str) -> Option<&'a Expression> {
    block
        .body
        .attributes()
        .find(|attribute| attribute.key.as_str() == name)
        .map(|attribute| &attribute.expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::repo_root;

    #[test]
    fn reads_the_real_template_in_order() {
        let template = Template {
            path: repo_root().join("packer/cryptoserver.pkr.hcl"),
            dist_tarball: PathBuf::from("/release.tar.gz"),
        };
        let steps = template.steps().unwrap();
        let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "file release.tar.gz -> /tmp/cryptoserver.tar.gz",
                "shell inline (6 lines)",
                "shell close-doors.sh",
                "shell remove-build-access.sh",
            ]
        );
        assert!(matches!(
            steps.last(),
            Some(Step::Shell {
                skip_clean: true,
                ..
            })
        ));
        assert_eq!(template.variable_default("ssh_username").unwrap(), "admin");
    }

    #[test]
    fn fills_packer_s_placeholders() {
        assert_eq!(
            Step::command(DEFAULT_EXECUTE_COMMAND, "/tmp/s.sh", "A='1'"),
            "chmod +x /tmp/s.sh; A='1' /tmp/s.sh"
        );
        assert_eq!(
            Step::command("sudo env {{ .Vars }} {{ .Path }}", "/tmp/s.sh", "A='1'"),
            "sudo env A='1' /tmp/s.sh"
        );
    }
}
