package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

// Version is drover's version, set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

// usageFlagError is a flag or argument error; printed says whether it was
// shown already.
type usageFlagError struct {
	err     error
	printed bool
}

func (e *usageFlagError) Error() string { return e.err.Error() }

func exitCode(err error) int {
	var ue *usageFlagError
	if errors.As(err, &ue) {
		return cli.ExitUsage
	}
	return cli.ExitCode(err)
}

// globals are the flags every command shares.
type globals struct {
	file      string
	output    string
	hosts     []string
	role      string
	binary    string
	known     string
	sshConfig string
	identity  string
	acceptNew bool
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "drover",
		Short: "Deploy web apps to fleets of Linux servers with zero downtime",
		Long: `drover deploys web applications to fleets of Linux servers with zero downtime.

Push: 'drover deploy ENV' drives every host of an environment over SSH:
prepare a release everywhere, then activate it. Each host keeps releases/,
shared/, a cached git mirror and a 'current' symlink switched atomically.
The app is described by drover.yml in the directory you stand in
('drover init' writes one).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		fmt.Fprintf(os.Stderr, "drover: %v\nRun '%s --help' for usage.\n", err, c.CommandPath())
		return &usageFlagError{err: err, printed: true}
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&g.file, "file", "f", "", "drover.yml to read (default ./drover.yml)")
	pf.StringVarP(&g.output, "output", "o", "", "output format: json for scripts")
	pf.StringSliceVar(&g.hosts, "host", nil, "only these hosts (names from drover.yml; repeat or comma-separate)")
	pf.StringVar(&g.role, "role", "", "only hosts with this role")
	pf.StringVar(&g.binary, "node-binary", os.Getenv("DROVER_NODE_BINARY"), "drover binary to copy to hosts (default: this one)")
	pf.StringVar(&g.known, "known-hosts", "", "known_hosts file (default ~/.ssh/known_hosts)")
	pf.StringVar(&g.sshConfig, "ssh-config", "", "ssh config file (default ~/.ssh/config)")
	pf.StringVarP(&g.identity, "identity", "i", "", "SSH private key for hosts that name none")
	pf.BoolVar(&g.acceptNew, "insecure-accept-new", false, "add unknown host keys to known_hosts (a changed key is always refused)")

	root.AddCommand(
		newVersionCmd(),
		newInitCmd(g),
		newDemoCmd(g),
		newDeployCmd(g, "deploy"),
		newDeployCmd(g, "prepare"),
		newActivateCmd(g),
		newResumeCmd(g),
		newRollbackCmd(g),
		newReleasesCmd(g),
		newDecideCmd(g, "promote"),
		newDecideCmd(g, "abort"),
		newCleanupCmd(g),
		newExecCmd(g),
		newServiceCmd(g),
		newTasksCmd(g),
		newLockCmd(g, true),
		newLockCmd(g, false),
		newNodeCmd(),
		newServerCmd(g),
		newReleaseCmd(g),
		newRolloutsCmd(g),
		newRolloutCmd(g),
		newStatusCmd(g),
		newNodesCmd(g),
		newAgentCmd(g),
	)
	return root
}

func (g *globals) common(cmd *cobra.Command, env string) cli.Common {
	c := cli.Common{File: g.file, Env: env, Hosts: g.hosts, Role: g.role, IO: cli.StdIO(g.output)}
	c.Transport.Binary = g.binary
	c.Transport.KnownHosts = g.known
	c.Transport.SSHConfig = g.sshConfig
	c.Transport.IdentityFile = g.identity
	c.Transport.AcceptNew = g.acceptNew
	return c
}

// exactArgs is cobra.ExactArgs with drover's usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &usageFlagError{err: fmt.Errorf("%s needs %s (got %d arguments); see '%s --help'", cmd.CommandPath(), what, len(args), cmd.CommandPath())}
		}
		return nil
	}
}

func keepDays(d float64) time.Duration { return time.Duration(d * 24 * float64(time.Hour)) }
