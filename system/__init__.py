"""What Wangzheng needs from the operating system, shared by the layers that run helper processes."""
