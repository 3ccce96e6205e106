"""The EC2 side of EBS-backed PersistentVolumes: describe and delete volumes.

Why: two cluster behaviours depend on the EBS volume behind a PV. The attach of a
volume to a node fails unless the volume exists and is in the node's availability
zone ("Amazon EBS volumes ... can be attached to any instance in the same
Availability Zone", https://docs.aws.amazon.com/ebs/latest/userguide/ebs-attaching-volume.html),
and a `Delete` reclaim policy deletes the volume when its claim goes
(https://kubernetes.io/docs/concepts/storage/persistent-volumes/#delete). The endpoint is
configurable (moto by default, or any EC2-compatible endpoint of the test stack).
Credentials come from the environment (the stack's test keys); they are never logged.
"""

import os

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

EBS_CSI_DRIVER = "ebs.csi.aws.com"


class Ec2Error(Exception):
    """An EC2 call that failed for another reason than a missing volume."""


def volume_id(pv):
    """The EBS volume ID of a PV, as Velero's GetVolumeID reads it; None if not EBS."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi") or {}
    if csi.get("driver") == EBS_CSI_DRIVER and csi.get("volumeHandle"):
        return csi["volumeHandle"]
    ebs = spec.get("awsElasticBlockStore") or {}
    if ebs.get("volumeID"):
        return ebs["volumeID"].rsplit("/", 1)[-1]  # aws://<zone>/vol-...
    return None


class Ec2:
    def __init__(self, endpoint, region):
        self.endpoint = endpoint
        self.client = boto3.client(
            "ec2", endpoint_url=endpoint, region_name=region,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))

    def describe(self, vid):
        """{"zone", "state"} of the volume, or None if EC2 says it does not exist."""
        try:
            vols = self.client.describe_volumes(VolumeIds=[vid])["Volumes"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("InvalidVolume.NotFound", "InvalidVolumeID.Malformed"):
                return None
            raise Ec2Error(f"DescribeVolumes {vid} at {self.endpoint}: {e}") from None
        except BotoCoreError as e:
            raise Ec2Error(f"DescribeVolumes {vid} at {self.endpoint}: {e}") from None
        if not vols:
            return None
        return {"zone": vols[0].get("AvailabilityZone"), "state": vols[0].get("State")}

    def delete(self, vid):
        """Delete the volume; a volume already gone counts as deleted."""
        try:
            self.client.delete_volume(VolumeId=vid)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidVolume.NotFound":
                return
            raise Ec2Error(f"DeleteVolume {vid} at {self.endpoint}: {e}") from None
        except BotoCoreError as e:
            raise Ec2Error(f"DeleteVolume {vid} at {self.endpoint}: {e}") from None
