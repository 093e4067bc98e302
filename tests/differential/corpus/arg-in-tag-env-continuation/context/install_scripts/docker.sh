#!/bin/bash
install -d -m 0750 /etc/docker && echo '{}' > /etc/docker/daemon.json
