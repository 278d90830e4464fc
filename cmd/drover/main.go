// Command drover deploys web applications to fleets of Linux servers with
// zero downtime: push over SSH, or pull by an agent that follows a control
// server. This file only builds the CLI and exits with its code.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/drover/drover/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	if err != nil && !cli.IsReported(err) {
		var ue *usageFlagError
		if !errors.As(err, &ue) || !ue.printed {
			fmt.Fprintln(os.Stderr, "drover:", err)
		}
	}
	os.Exit(exitCode(err))
}
