package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// completionCommand prints a shell completion script. bash and zsh ask
// weftctl itself for the candidates (--generate-bash-completion, which
// knows every command and flag); fish gets a static script.
func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(weftctl completion bash)",
		ArgsUsage: "bash|zsh|fish",
		Action: func(c *cli.Context) error {
			switch shell := c.Args().First(); {
			case c.NArg() != 1:
				return cli.Exit("completion takes one shell: bash, zsh or fish", 2)
			case shell == "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case shell == "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			case shell == "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				fmt.Fprint(c.App.Writer, script)
			default:
				return cli.Exit(fmt.Sprintf("completion: shell %q is unknown; use bash, zsh or fish", shell), 2)
			}
			return nil
		},
	}
}

const bashCompletion = `# weftctl completion for bash: source <(weftctl completion bash)
_weftctl() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  local words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  local opts
  if [[ "$cur" == -* ]]; then
    opts=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o bashdefault -o default -F _weftctl weftctl
`

const zshCompletion = `#compdef weftctl
# weftctl completion for zsh: source <(weftctl completion zsh)
_weftctl() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} $cur --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _weftctl weftctl
`
