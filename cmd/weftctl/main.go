// Command weftctl inspects and edits what weft keeps in etcd.
package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/etcdflags"
	"github.com/weft-net/weft/internal/version"
)

func main() {
	app := &cli.App{
		Name:                 "weftctl",
		Usage:                "inspect and edit weft's leases, configuration and services",
		Version:              version.Get().String(),
		Flags:                etcdflags.Flags("WEFTCTL"),
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			leasesCommand(),
			configCommand(),
			serviceCommand(),
			statusCommand(),
			sandboxCommand(),
			completionCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // main prints and exits
	}
	notFound(app)
	usageErrorsExit2(app.Commands)
	app.OnUsageError = usageError
	if err := app.Run(flagsFirst(app, os.Args)); err != nil {
		if msg := err.Error(); msg != "" { // "": the output said it (status: not ready)
			fmt.Fprintln(os.Stderr, "weftctl:", msg)
		}
		if diagnose != nil {
			if why := diagnose(); why != nil {
				fmt.Fprintln(os.Stderr, "weftctl:", why)
			}
		}
		os.Exit(exitCode(err))
	}
}

// flagsFirst moves a command's flags in front of its arguments, so that
// "weftctl service add default/web --port 80" works as it reads: the CLI
// library stops parsing flags at the first argument. A flag's value stays
// with it; "--" ends the flags.
func flagsFirst(app *cli.App, args []string) []string {
	// The shell's completion request must stay last, where the CLI
	// library looks for it.
	if n := len(args); n > 1 && args[n-1] == "--generate-bash-completion" {
		return append(flagsFirst(app, args[:n-1]), args[n-1])
	}
	out := slices.Clone(args[:1])
	cmds, flags := app.Commands, app.Flags
	i := 1
	// Up to the deepest command named: global flags and command names.
	for i < len(args) {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			out = append(out, a)
			if takesValue(flags, a) && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
			i++
			continue
		}
		idx := slices.IndexFunc(cmds, func(c *cli.Command) bool { return c.HasName(a) })
		if idx < 0 {
			break
		}
		out = append(out, a)
		cmds, flags = cmds[idx].Subcommands, cmds[idx].Flags
		i++
	}
	var positional []string
	for ; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			positional = append(positional, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			out = append(out, a)
			if takesValue(flags, a) && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
		default:
			positional = append(positional, a)
		}
	}
	return append(out, positional...)
}

// takesValue reports whether arg ("--name", "-n", not "--name=v") names a
// flag among flags that takes a value.
func takesValue(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			_, isBool := f.(*cli.BoolFlag)
			return !isBool
		}
	}
	return false
}

// usageError turns a flag or argument error into exit status 2.
func usageError(_ *cli.Context, err error, _ bool) error {
	return cli.Exit(err.Error(), 2)
}

func usageErrorsExit2(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = usageError
		usageErrorsExit2(c.Subcommands)
	}
}

// notFound makes an unknown command a usage error (exit 2) naming it and
// the commands there are, at every level.
func notFound(app *cli.App) {
	app.CommandNotFound = func(c *cli.Context, name string) {
		fmt.Fprintf(c.App.ErrWriter, "weftctl: %q is not a weftctl command; use one of %s\n", name, commandNames(app.Commands))
		os.Exit(2)
	}
	var walk func(cmds []*cli.Command, path string)
	walk = func(cmds []*cli.Command, path string) {
		for _, cmd := range cmds {
			if len(cmd.Subcommands) == 0 {
				continue
			}
			full, subs := path+" "+cmd.Name, cmd.Subcommands
			if cmd.Action == nil {
				// A command that only groups others: its bare name or an
				// unknown word is a usage error.
				cmd.Action = func(c *cli.Context) error {
					if c.NArg() == 0 {
						return cli.Exit(fmt.Sprintf("weftctl%s needs a command: one of %s", full, commandNames(subs)), 2)
					}
					return cli.Exit(fmt.Sprintf("%q is not a weftctl%s command; use one of %s", c.Args().First(), full, commandNames(subs)), 2)
				}
			}
			walk(subs, full)
		}
	}
	walk(app.Commands, "")
}

func commandNames(cmds []*cli.Command) string {
	var names []string
	for _, c := range cmds {
		if !c.Hidden {
			names = append(names, c.Name)
		}
	}
	return strings.Join(names, ", ")
}

// exitCode is 2 for bad input (usage, flags, configuration) and 1 otherwise.
func exitCode(err error) int {
	if coder, ok := err.(cli.ExitCoder); ok {
		return coder.ExitCode()
	}
	return 1
}
