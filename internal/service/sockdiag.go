package service

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"
)

// serverInode returns the inode of the server side of the TCP connection
// from client to server on this machine, asking the kernel for that one
// socket (sock_diag netlink, an exact lookup): /proc/net/tcp would have to
// be read whole, and under load it holds tens of thousands of lines.
func serverInode(server, client *net.TCPAddr) (uint64, error) {
	family := uint8(syscall.AF_INET)
	src, dst := server.IP.To4(), client.IP.To4()
	if src == nil || dst == nil {
		family, src, dst = syscall.AF_INET6, server.IP.To16(), client.IP.To16()
	}
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkSockDiag)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	defer syscall.Close(fd)
	tv := syscall.Timeval{Sec: 2}
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)

	// nlmsghdr (16) + inet_diag_req_v2 (56)
	req := make([]byte, 16+56)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1)
	r := req[16:]
	r[0], r[1] = family, syscall.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], uint16(server.Port))
	binary.BigEndian.PutUint16(id[2:], uint16(client.Port))
	copy(id[4:20], src)
	copy(id[20:36], dst)
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case syscall.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if errno := -int32(ne.Uint32(m.Data)); errno != 0 {
					return 0, fmt.Errorf("sock_diag: %w", syscall.Errno(errno))
				}
			}
		case sockDiagByFamily:
			// inet_diag_msg: 4 bytes, id (48), expires, rqueue, wqueue, uid, inode
			// Without an established connection the kernel answers with
			// the port's listening socket: not the one asked for.
			if len(m.Data) >= 72 && m.Data[1] != tcpStateListen && int(binary.BigEndian.Uint16(m.Data[6:])) == client.Port {
				return uint64(ne.Uint32(m.Data[68:])), nil
			}
			return 0, nil
		}
	}
	return 0, errors.New("sock_diag: no answer")
}

const (
	tcpStateListen   = 10 // TCP_LISTEN
	netlinkSockDiag  = 4  // NETLINK_SOCK_DIAG
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
)
