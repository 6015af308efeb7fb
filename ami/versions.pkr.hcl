# For packer >= 1.7 (`packer init ami/`). Debian's packer 1.6.6 rejects this block, so it lives
# apart from herd-agent.pkr.hcl, which that packer validates alone.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}
