package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/transport/ssh"
)

// sshConn runs `drover node serve` over one SSH connection per host,
// with the drover binary copied there once per version.
type sshConn struct {
	client *ssh.Client
	remote string // path of the drover binary on the host
}

// Serve runs one node request in a new session on the shared connection.
func (t *sshConn) Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	var stderr bytes.Buffer
	err := t.client.RunGraceful(ctx, node.CancelWait, shellQuote(t.remote)+" node serve", stdin, stdout, &limitedBuffer{b: &stderr, n: 16 << 10})
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

func openSSH(ctx context.Context, h *config.Host, opts Options) (*Node, func() error, error) {
	identity := h.IdentityFile
	if identity == "" {
		identity = opts.IdentityFile
	}
	c, err := ssh.Dial(ctx, ssh.Config{
		Name: h.Name, Host: h.Host, Port: h.Port, User: h.User, IdentityFile: identity,
		KnownHosts: opts.KnownHosts, AcceptNew: opts.AcceptNew, SSHConfig: opts.SSHConfig,
	})
	if err != nil {
		return nil, nil, err
	}
	remote, err := c.Install(ctx, opts.binary)
	if err != nil {
		c.Close()
		var pe *ssh.PlatformError
		if errors.As(err, &pe) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("copy drover to host: %w", err)
	}
	return NewNode(&sshConn{client: c, remote: remote}, h), c.Close, nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.b.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
