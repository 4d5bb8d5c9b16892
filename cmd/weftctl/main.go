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
		Name:    "weftctl",
		Usage:   "inspect and edit weft's leases, configuration and services",
		Version: version.Version,
		Flags:   etcdflags.Flags("WEFTCTL"),
		Commands: []*cli.Command{
			leasesCommand(),
			configCommand(),
			serviceCommand(),
			statusCommand(),
			sandboxCommand(),
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
	}
	usageErrorsExit2(app.Commands)
	app.OnUsageError = usageError
	if err := app.Run(flagsFirst(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "weftctl:", err)
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

// exitCode is 2 for bad input (usage, flags, configuration) and 1 otherwise.
func exitCode(err error) int {
	if coder, ok := err.(cli.ExitCoder); ok {
		return coder.ExitCode()
	}
	return 1
}
