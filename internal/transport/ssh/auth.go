package ssh

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// AuthError is a host that accepted none of the keys drover offered.
type AuthError struct {
	User    string   // the user drover logged in as
	Host    string   // host:port
	Methods []string // what was tried, e.g. "key file ~/.ssh/id_ed25519 (ssh-ed25519 SHA256:...)", "ssh-agent: no keys"
	Err     error    // the SSH library's error
}

// Error names the user, the host, every key tried, and what to do.
func (e *AuthError) Error() string {
	tried := "no keys at all (no --identity-file, no IdentityFile in ssh config, no ~/.ssh/id_*, no ssh-agent in SSH_AUTH_SOCK)"
	if len(e.Methods) > 0 {
		tried = strings.Join(e.Methods, "; ")
	}
	return fmt.Sprintf("authentication as %s@%s failed: tried %s. "+
		"Add one of these public keys to ~%s/.ssh/authorized_keys on the host, or pick a key it accepts (--identity-file, ssh config IdentityFile, ssh-add)",
		e.User, e.Host, tried, e.User)
}

// Unwrap returns the SSH library's error.
func (e *AuthError) Unwrap() error { return e.Err }

// keys is what one hop offers for publickey authentication.
type keys struct {
	signers []gossh.Signer
	tried   []string
	agent   net.Conn // closed after the handshake
}

func (k *keys) close() {
	if k.agent != nil {
		k.agent.Close()
	}
}

// loadKeys collects signers in the order they are offered: the explicit
// identity file, the ssh config's IdentityFiles, ssh-agent's keys, and
// OpenSSH's default key files when nothing else names a file. An explicit
// identity file that cannot be read is an error; others are skipped and
// noted so an auth failure can say why.
func (h hop) loadKeys() (*keys, error) {
	k := &keys{}
	seen := map[string]bool{}
	add := func(s gossh.Signer, desc string) {
		blob := string(s.PublicKey().Marshal())
		if seen[blob] {
			return
		}
		seen[blob] = true
		k.signers = append(k.signers, s)
		k.tried = append(k.tried, fmt.Sprintf("%s (%s %s)", desc, s.PublicKey().Type(), gossh.FingerprintSHA256(s.PublicKey())))
	}
	fromFile := func(path string, explicit bool) error {
		data, err := os.ReadFile(path)
		if err != nil {
			if explicit {
				return fmt.Errorf("read identity file: %w", err)
			}
			if !errors.Is(err, fs.ErrNotExist) {
				k.tried = append(k.tried, fmt.Sprintf("key file %s (unreadable: %v)", path, err))
			}
			return nil
		}
		s, err := gossh.ParsePrivateKey(data)
		var pp *gossh.PassphraseMissingError
		switch {
		case errors.As(err, &pp):
			k.tried = append(k.tried, fmt.Sprintf("key file %s (skipped: it has a passphrase; load it with ssh-add)", path))
		case err != nil:
			if explicit {
				return fmt.Errorf("parse identity file %s: %w", path, err)
			}
			k.tried = append(k.tried, fmt.Sprintf("key file %s (skipped: %v)", path, err))
		default:
			add(s, "key file "+path)
		}
		return nil
	}
	if h.explicitID != "" {
		if err := fromFile(h.explicitID, true); err != nil {
			return nil, err
		}
	}
	for _, p := range h.configIDs {
		_ = fromFile(p, false)
	}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			k.tried = append(k.tried, fmt.Sprintf("ssh-agent at %s (cannot connect: %v)", sock, err))
		} else {
			k.agent = conn
			signers, err := agent.NewClient(conn).Signers()
			switch {
			case err != nil:
				k.tried = append(k.tried, fmt.Sprintf("ssh-agent at %s (cannot list keys: %v)", sock, err))
			case len(signers) == 0:
				k.tried = append(k.tried, fmt.Sprintf("ssh-agent at %s (holds no keys)", sock))
			}
			for _, s := range signers {
				add(s, "ssh-agent key")
			}
		}
	}
	if h.explicitID == "" && len(h.configIDs) == 0 {
		if home, err := os.UserHomeDir(); err == nil {
			for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				_ = fromFile(filepath.Join(home, ".ssh", name), false)
			}
		}
	}
	return k, nil
}
