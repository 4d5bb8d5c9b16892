package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weft-net/weft/subnet"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "read or write the network configuration (net-conf.json) in etcd",
		Subcommands: []*cli.Command{
			{
				Name:  "get",
				Usage: "print the configuration stored in etcd",
				Action: func(c *cli.Context) error {
					store, closeStore, err := openStore(c)
					if err != nil {
						return err
					}
					defer closeStore()
					cfg, warnings, err := store.GetConfig(c.Context)
					var bad *subnet.ConfigError
					switch {
					case errors.As(err, &bad):
						return fmt.Errorf("the configuration at %s is invalid: %w", store.ConfigKey(), err)
					case err != nil:
						return err
					}
					printWarnings(c.App.ErrWriter, warnings)
					c.App.Writer.Write(cfg.Raw)
					if n := len(cfg.Raw); n > 0 && cfg.Raw[n-1] != '\n' {
						fmt.Fprintln(c.App.Writer)
					}
					return nil
				},
			},
			{
				Name:      "set",
				Usage:     "validate FILE (- for standard input) and write it to etcd",
				ArgsUsage: "FILE",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return cli.Exit("config set takes exactly one FILE (or - for standard input)", 2)
					}
					name := c.Args().First()
					data, err := readInput(name, c.App.Reader)
					if err != nil {
						return cli.Exit(fmt.Sprintf("reading %s: %v", name, err), 2)
					}
					cfg, warnings, err := subnet.ParseConfig(data)
					if err != nil {
						return cli.Exit(fmt.Sprintf("%s: %v; nothing was written", name, err), 2)
					}
					printWarnings(c.App.ErrWriter, warnings)
					store, closeStore, err := openStore(c)
					if err != nil {
						return err
					}
					defer closeStore()
					if err := store.PutConfig(c.Context, cfg); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "wrote %s\n", store.ConfigKey())
					return nil
				},
			},
		},
	}
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(name)
}

func printWarnings(w io.Writer, warnings []string) {
	for _, msg := range warnings {
		fmt.Fprintln(w, "weftctl: warning:", msg)
	}
}
