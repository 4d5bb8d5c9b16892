// Command weftctl inspects and edits what weft keeps in etcd.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/internal/etcdflags"
	"github.com/weft-net/weft/internal/version"
)

func main() {
	app := &cli.App{
		Name:    "weftctl",
		Usage:   "inspect and edit weft's leases and configuration",
		Version: version.Version,
		Flags:   etcdflags.Flags("WEFTCTL"),
		Commands: []*cli.Command{
			leasesCommand(),
			configCommand(),
			statusCommand(),
			sandboxCommand(),
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
	}
	usageErrorsExit2(app.Commands)
	app.OnUsageError = usageError
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "weftctl:", err)
		if diagnose != nil {
			if why := diagnose(); why != nil {
				fmt.Fprintln(os.Stderr, "weftctl:", why)
			}
		}
		os.Exit(exitCode(err))
	}
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
