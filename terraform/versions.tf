terraform {
  # 1.9: variable validations that refer to other variables (the volume size to the mode).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.8.0: aws_instance's force_destroy, without which a replacing apply fails
      # on the instance's termination protection.
      version = ">= 6.8.0, < 7.0.0"
    }
  }
}
