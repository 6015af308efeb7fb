# The herd-agent AMI: Debian 12 + k3s (not enabled) + etcd + helm + baked charts + the herd-agent
# .deb, then image hygiene and validation. Build (README "Deploy on AWS"):
#   packer init ami/ && packer build -var-file=ami/example.pkrvars.hcl ami/
# Offline check: packer validate -var-file=ami/example.pkrvars.hcl ami/herd-agent.pkr.hcl

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name filter of the source AMI (Debian's official images)."
}

variable "source_ami_owners" {
  type        = list(string)
  default     = ["136693071363"]
  description = "Owners of the source AMI (136693071363: Debian)."
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "k3s_version" {
  type        = string
  description = "k3s release, e.g. v1.32.5+k3s1."
}

variable "k3s_sha256" {
  type        = string
  description = "SHA-256 of that release's k3s binary (its sha256sum-amd64.txt)."
}

variable "etcd_version" {
  type    = string
  default = "v3.5.21"
}

variable "etcd_sha256" {
  type        = string
  description = "SHA-256 of etcd-<version>-linux-amd64.tar.gz (the release's SHA256SUMS)."
}

variable "helm_version" {
  type    = string
  default = "v3.17.3"
}

variable "helm_sha256" {
  type        = string
  description = "SHA-256 of helm-<version>-linux-amd64.tar.gz (get.helm.sh/<file>.sha256sum)."
}

variable "deb_path" {
  type        = string
  description = "The package from packaging/build-deb, e.g. dist/herd-agent_0.1.0_amd64.deb."
}

variable "charts_dir" {
  type        = string
  default     = "ami/charts"
  description = "Directory of Helm chart archives (*.tgz) baked in for the leader's offline bootstrap."
}

variable "ami_name_prefix" {
  type    = string
  default = "herd-agent-k3s"
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "herd" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "${var.ami_name_prefix}-${local.stamp}"

  source_ami_filter {
    filters = {
      name                  = var.source_ami_name
      architecture          = "x86_64"
      virtualization-type   = "hvm"
      root-device-type      = "ebs"
    }
    owners      = var.source_ami_owners
    most_recent = true
  }

  # The build instance itself answers IMDSv2 only (the stack's launch template does the same for
  # the instances launched from the image).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name        = "${var.ami_name_prefix}-${local.stamp}"
    k3s_version = var.k3s_version
    source_ami  = "{{ .SourceAMI }}"
  }
}

build {
  sources = ["source.amazon-ebs.herd"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/herd-artifacts /tmp/herd-scripts"]
  }

  provisioner "file" {
    source      = var.deb_path
    destination = "/tmp/herd-artifacts/herd-agent.deb"
  }

  provisioner "file" {
    source      = "${var.charts_dir}/"
    destination = "/tmp/herd-artifacts/charts"
  }

  provisioner "file" {
    source      = "${path.root}/scripts/"
    destination = "/tmp/herd-scripts"
  }

  provisioner "shell" {
    execute_command = "sudo -E env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = [
      "ARTIFACTS=/tmp/herd-artifacts",
      "K3S_VERSION=${var.k3s_version}",
      "K3S_SHA256=${var.k3s_sha256}",
      "ETCD_VERSION=${var.etcd_version}",
      "ETCD_SHA256=${var.etcd_sha256}",
      "HELM_VERSION=${var.helm_version}",
      "HELM_SHA256=${var.helm_sha256}",
    ]
    inline = [
      "set -e",
      "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates",
      "bash /tmp/herd-scripts/install-k3s.sh",
      "bash /tmp/herd-scripts/install-etcd.sh",
      "bash /tmp/herd-scripts/install-helm.sh",
      "bash /tmp/herd-scripts/install-charts.sh",
      "bash /tmp/herd-scripts/install-agent.sh",
      "bash /tmp/herd-scripts/cleanup.sh",
      "bash /tmp/herd-scripts/validate.sh",
      "rm -rf /tmp/herd-scripts",
    ]
  }

  post-processor "manifest" {
    output     = "ami/manifest.json"
    strip_path = true
  }
}
