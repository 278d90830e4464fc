package main

import (
	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

func newDemoCmd(g *globals) *cobra.Command {
	o := &cli.DemoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Deploy drover's bundled example app to this machine and print its URL",
		Long: `demo writes drover's example web service into a git repository, with a
drover.yml whose only host is this machine (transport: local), and deploys
it for real: release directory, shared/, hooks, managed service, health
check. Run it again to see a zero-downtime redeploy.`,
		Example: `  drover demo
  drover demo --dir /tmp/drover-demo --port 9000 --port 9001`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Common = g.common(cmd, "demo")
			o.IO = o.Common.IO
			return cli.Demo(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "where the example repository and deploy root go (default ~/.local/share/drover/demo)")
	cmd.Flags().IntSliceVar(&o.Ports, "port", nil, "ports of the example's web service (default 18080,18081)")
	return cmd
}
